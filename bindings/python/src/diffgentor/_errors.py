"""Exceptions: one class per ``DG_ERROR_*`` code, all subclasses of :class:`Error`."""

from __future__ import annotations

import enum
from typing import Dict, List, Optional, Sequence, Type


class ErrorCode(enum.IntEnum):
    """Mirrors ``dg_error_code_t``: values are part of the ABI and are never renumbered."""

    OK = 0
    NULL_ARG = 1
    INVALID_ARG = 2
    IO = 3
    MODEL = 4
    UNSUPPORTED = 5
    EP_UNAVAILABLE = 6
    CANCELLED = 7
    BACKEND = 8
    PANIC = 9
    REMOTE = 10
    RATE_LIMITED = 11
    TIMEOUT = 12
    REFUSED = 13


class Error(Exception):
    """Base class of every diffgentor error. ``code`` is the :class:`ErrorCode` (the C API's
    ``DG_ERROR_*`` value), ``message`` the library's message (also ``str(error)``)."""

    #: The code raised for this class when the library reports none of its own.
    default_code: ErrorCode = ErrorCode.BACKEND

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message: str = message
        self.code: ErrorCode = _as_code(code if code is not None else self.default_code)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code=ErrorCode.{self.code.name})"

    def __reduce__(self):  # type: ignore[no-untyped-def]  # picklable (multiprocessing)
        return (type(self), (self.message, int(self.code)))


class NullArgError(Error):
    """``DG_ERROR_NULL_ARG``: a required handle was NULL; from Python, a closed object was used."""

    default_code = ErrorCode.NULL_ARG


class InvalidArgError(Error):
    """``DG_ERROR_INVALID_ARG``: a bad value (unknown key, size the model rejects, ...)."""

    default_code = ErrorCode.INVALID_ARG


class IoError(Error):
    """``DG_ERROR_IO``: reading or writing a file failed."""

    default_code = ErrorCode.IO


class ModelError(Error):
    """``DG_ERROR_MODEL``: the model package is missing or malformed."""

    default_code = ErrorCode.MODEL


class UnsupportedError(Error):
    """``DG_ERROR_UNSUPPORTED``: a feature diffgentor does not implement."""

    default_code = ErrorCode.UNSUPPORTED


class EpUnavailableError(Error):
    """``DG_ERROR_EP_UNAVAILABLE``: the execution provider cannot be used with this ONNX Runtime."""

    default_code = ErrorCode.EP_UNAVAILABLE


class CancelledError(Error):
    """``DG_ERROR_CANCELLED``: the progress callback returned False or the CancelToken was raised."""

    default_code = ErrorCode.CANCELLED


class BackendError(Error):
    """``DG_ERROR_BACKEND``: ONNX Runtime failed to load or to run."""

    default_code = ErrorCode.BACKEND


class PanicError(Error):
    """``DG_ERROR_PANIC``: a bug inside diffgentor; the library stays usable."""

    default_code = ErrorCode.PANIC


class RemoteError(Error):
    """``DG_ERROR_REMOTE``: a remote service answered with an error, sent something unusable, or
    could not be reached; the message keeps its status, error type and message."""

    default_code = ErrorCode.REMOTE


class RateLimitedError(Error):
    """``DG_ERROR_RATE_LIMITED``: a remote service still refused for rate or quota after the retries."""

    default_code = ErrorCode.RATE_LIMITED


class RemoteTimeoutError(Error):
    """``DG_ERROR_TIMEOUT``: a remote call did not finish within its timeout."""

    default_code = ErrorCode.TIMEOUT


class RefusedError(Error):
    """``DG_ERROR_REFUSED``: a remote service's safety system blocked the prompt or the image."""

    default_code = ErrorCode.REFUSED


class LibraryNotFoundError(Error):
    """libdiffgentor itself could not be found or loaded. ``code`` is ``ErrorCode.BACKEND``;
    ``tried`` lists every place looked at, with the reason each failed."""

    default_code = ErrorCode.BACKEND

    def __init__(self, message: str, tried: Sequence[str] = (), code: Optional[int] = None) -> None:
        super().__init__(message, code)
        self.tried: List[str] = list(tried)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (type(self), (self.message, self.tried, int(self.code)))


_BY_CODE: Dict[ErrorCode, Type[Error]] = {
    ErrorCode.NULL_ARG: NullArgError,
    ErrorCode.INVALID_ARG: InvalidArgError,
    ErrorCode.IO: IoError,
    ErrorCode.MODEL: ModelError,
    ErrorCode.UNSUPPORTED: UnsupportedError,
    ErrorCode.EP_UNAVAILABLE: EpUnavailableError,
    ErrorCode.CANCELLED: CancelledError,
    ErrorCode.BACKEND: BackendError,
    ErrorCode.PANIC: PanicError,
    ErrorCode.REMOTE: RemoteError,
    ErrorCode.RATE_LIMITED: RateLimitedError,
    ErrorCode.TIMEOUT: RemoteTimeoutError,
    ErrorCode.REFUSED: RefusedError,
}


def _as_code(code: int) -> ErrorCode:
    try:
        return ErrorCode(code)
    except ValueError:  # a code from a newer library: keep the class, report it as a backend error
        return ErrorCode.BACKEND


def error_class(code: int) -> Type[Error]:
    """The exception class for a ``DG_ERROR_*`` value (:class:`Error` for an unknown one)."""
    try:
        return _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        return Error


def error_from_code(code: int, message: str) -> Error:
    cls = error_class(code)
    if cls is Error and code not in (c.value for c in ErrorCode):
        message = f"{message} (unknown error code {code})"
    return cls(message, code)
