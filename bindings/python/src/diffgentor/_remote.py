"""Remote: a pipeline whose requests go to a hosted image service (OpenAI Images or a server with
its API, Google Gemini) instead of a local model package (``dg_pipeline_new_remote``)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

from . import _inflight, _native
from ._errors import Error, ErrorCode, InvalidArgError
from ._runtime import BasePipeline, _new


def _option_text(value: Any, key: str) -> str:
    """An option value as the C API's string. Messages name the key and the type, never the value:
    it may be the API key."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):  # pool_file
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"remote option {key!r} must be a str (or a number or bool), not {type(value).__name__}")


def _option_bytes(value: Any, key: str) -> bytes:
    text = _option_text(value, key)
    if key != "api_key":
        return _native.encode(text, f"remote option {key!r}")
    try:
        return _native.encode(text, "api_key")
    except InvalidArgError:
        # encode's message quotes the offending character: say nothing of the key's text.
        raise InvalidArgError("api_key must be UTF-8 text without NUL characters", ErrorCode.INVALID_ARG) from None


class Remote(BasePipeline):
    """A pipeline that sends its requests to a remote image service: ``backend`` "openai" (OpenAI
    Images, or any server with its API: ``base_url`` ``http://HOST:PORT/v1``) or "gemini".

    It generates like a local :class:`Pipeline` (the same :meth:`generate`, ``close()``, ``with``)
    and needs no :class:`Runtime`. Nothing is sent before the first :meth:`generate`. Thread-safe:
    many threads may generate at once (``max_in_flight`` calls per endpoint go out together).

    Options are the C API's string keys (docs/backends.md): ``base_url``, ``api_key``, ``model``,
    ``timeout_s`` (one call's limit), ``max_retries`` (retries after the first attempt, on
    connection errors, timeouts, 408, 409, 429 and 5xx) and, as further keywords,
    ``backoff_s``, ``max_backoff_s``, ``max_in_flight``, ``breaker_failures``,
    ``breaker_cooldown_s``, ``pool_file``, OpenAI's ``quality``, ``background``,
    ``output_format``, ``output_compression``, ``moderation``, ``response_format``, ``user`` and
    Gemini's ``api_version``, ``aspect_ratio``, ``image_size``, ``response_modalities``. Values may
    be str, int, float or bool; None (or "") leaves an option unset, and an unset option comes from
    ``DG_<BACKEND>_<KEY>`` in the environment (``DG_OPENAI_API_KEY``, ...), then the default.

    The API key is kept by the library only: it is not stored on this object, and appears in no
    repr and no error message (the library redacts it even when a service quotes it back).

    Raises :class:`InvalidArgError` for an unknown backend, an unknown option (named) or a bad
    value, :class:`LibraryNotFoundError` when libdiffgentor cannot be found.
    """

    def __init__(
        self,
        backend: str,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        model: Optional[str] = None,
        timeout_s: Optional[float] = None,
        max_retries: Optional[int] = None,
        **options: Any,
    ) -> None:
        if not isinstance(backend, str):
            raise TypeError(f"backend must be a str, not {type(backend).__name__}")
        given: Dict[str, Any] = dict(options)
        given.update(base_url=base_url, api_key=api_key, model=model, timeout_s=timeout_s, max_retries=max_retries)
        # Encoded before anything is allocated, so a bad value raises without a C handle to free.
        pairs: List[Tuple[bytes, bytes]] = [
            (_native.encode(key, "remote option key"), _option_bytes(value, key))
            for key, value in sorted(given.items())
            if value is not None
        ]
        name = _native.encode(backend, "backend")
        lib = _native.lib()
        opts = _new(lib.dg_generator_options_new)
        try:
            for key_b, value_b in pairs:
                _native.check(lib.dg_generator_options_set(opts, key_b, value_b))
            # Registered like a model load: exit waits for it (it reads a pool file at most).
            with _inflight.running():
                ptr = _new(lib.dg_pipeline_new_remote, name, opts)
        except Error as e:
            # The library redacts keys in what services say, but quotes a rejected option value
            # as given (a base_url with the key pasted into it): redact the key there too.
            if isinstance(api_key, str) and len(api_key) >= 4 and api_key in e.message:
                raise type(e)(e.message.replace(api_key, "<redacted>"), e.code) from None
            raise
        finally:
            lib.dg_generator_options_free(opts)
        self._own_pipeline(ptr, "Remote")
        #: The backend asked for ("openai" or "gemini"; also :attr:`kind`).
        self.backend: str = backend
        #: ``base_url`` as given (None: from the environment, or the service's public API).
        self.base_url: Optional[str] = base_url
        #: ``model`` as given (None: from the environment, or the backend's default).
        self.model: Optional[str] = model

    def __repr__(self) -> str:
        # Only what was given and is no secret: the key is not even kept here.
        shown = "".join(f" {k}={v!r}" for k, v in (("base_url", self.base_url), ("model", self.model)) if v)
        state = " closed" if self.closed else ""
        return f"<diffgentor.Remote {self.backend!r}{shown}{state}>"
