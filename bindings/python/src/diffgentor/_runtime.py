"""Runtime, Pipeline, CancelToken and Progress: the Python face of the C handles. (Remote
pipelines, which share BasePipeline's generate, are in _remote.py.)"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import sys
import threading
import weakref
from contextlib import contextmanager
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
    overload,
)

from . import _inflight, _lora, _native
from ._errors import ErrorCode, InvalidArgError, NullArgError
from ._lora import LoraStack
from ._images import (
    ENCODED_KINDS,
    ImageInput,
    ImageList,
    OutputKind,
    RawImage,
    convert,
    parse_metadata,
    pixel_buffer,
    resolve_output,
)

if TYPE_CHECKING:  # pragma: no cover
    from types import TracebackType
    from typing import Literal

    import numpy
    import PIL.Image

PathLike = Union[str, "os.PathLike[str]"]
Self = TypeVar("Self", bound="_Closeable")

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1


class _Handle:
    """One C handle and its free function, freed exactly once: at close(), or, when calls are
    still using it then, when the last of them ends (so close() never races a running call)."""

    __slots__ = ("_ptr", "_free", "_what", "_lock", "_users", "_closed")

    def __init__(self, ptr: int, free: Callable[[int], None], what: str) -> None:
        self._ptr = ptr
        self._free = free
        self._what = what
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @contextmanager
    def borrow(self) -> Iterator[int]:
        with self._lock:
            if self._closed:
                raise NullArgError(f"{self._what} is closed", ErrorCode.NULL_ARG)
            self._users += 1
        try:
            yield self._ptr
        finally:
            with self._lock:
                self._users -= 1
                free_now = self._closed and self._users == 0
            if free_now:
                self._release()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            free_now = self._users == 0
        if free_now:
            self._release()

    def _release(self) -> None:
        ptr, self._ptr = self._ptr, 0
        if ptr:
            with _inflight.running(refuse=False):  # a free must not race the exit either
                self._free(ptr)


class _Closeable:
    """Deterministic release (close(), ``with``) plus a safety net: a ``weakref.finalize`` frees
    the handle when the object is garbage-collected or at interpreter exit."""

    _handle: _Handle
    _finalizer: "weakref.finalize[[], _Closeable]"

    def _own(self, ptr: int, free: Callable[[int], None], what: str) -> None:
        self._handle = _Handle(ptr, free, what)
        self._finalizer = weakref.finalize(self, self._handle.close)

    def close(self) -> None:
        """Frees the C handle now (deferred until running calls on it end). Idempotent."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional["TracebackType"],
    ) -> None:
        self.close()


def _new(fn: Any, *args: Any) -> int:
    """Calls a ``dg_error_t *fn(..., T **out)`` constructor; returns the handle or raises."""
    out = ctypes.c_void_p()
    _native.check(fn(*args, ctypes.byref(out)))
    assert out.value, "the library returned success without a handle"
    return out.value


def _uint(value: Any, what: str, maximum: int = _U32) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise InvalidArgError(f"{what} must be in 0..={maximum}, got {value}", ErrorCode.INVALID_ARG)
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return float(value)


def _param_text(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    raise TypeError(f"extra[{key!r}] must be a str (or a number or bool), not {type(value).__name__}")


def _option_text(value: Any, key: str) -> str:
    """A runtime option value (``dg_runtime_options_set``) as text: str, path, bool or number."""
    if isinstance(value, os.PathLike):
        path = os.fspath(value)
        if isinstance(path, str):
            return path
    if isinstance(value, str) or isinstance(value, bool) or isinstance(value, (int, float)):
        return _param_text(value, key)
    raise TypeError(f"options[{key!r}] must be a str, path, number or bool, not {type(value).__name__}")


#: ``generate(plan=...)``: the plan's JSON text (docs/editing.md), or the same as a dict.
Plan = Union[str, Mapping[str, Any]]


class Progress:
    """Progress of a running request, passed to the ``progress`` callback after every step (a
    remote pipeline reports once, when the service has answered: step 1 of 1)."""

    __slots__ = ("step", "total", "elapsed_seconds", "stage", "stages")

    def __init__(self, step: int, total: int, elapsed_seconds: float, stage: int = 1, stages: int = 1) -> None:
        #: Denoising steps finished so far (1 after the first step); with a plan, of all stages.
        self.step: int = step
        #: Denoising steps in the request.
        self.total: int = total
        #: Seconds since the request started.
        self.elapsed_seconds: float = elapsed_seconds
        #: The plan stage running, 1-based (1 without a plan, or from a library that predates stages).
        self.stage: int = stage
        #: Stages in the request (1 without a plan).
        self.stages: int = stages

    def __repr__(self) -> str:
        return (f"Progress(step={self.step}, total={self.total}, elapsed_seconds={self.elapsed_seconds:.3f}, "
                f"stage={self.stage}, stages={self.stages})")


#: ``progress`` callback type: return False to cancel the request (None or True go on).
ProgressCallback = Callable[[Progress], Optional[bool]]

_ELAPSED_END = _native.DgProgress.elapsed_seconds.offset + ctypes.sizeof(ctypes.c_double)
_TOTAL_END = _native.DgProgress.total.offset + ctypes.sizeof(ctypes.c_uint32)
_STAGE_END = _native.DgProgress.stage.offset + ctypes.sizeof(ctypes.c_uint32)
_STAGES_END = _native.DgProgress.stages.offset + ctypes.sizeof(ctypes.c_uint32)


class CancelToken(_Closeable):
    """A cancellation flag for one request: :meth:`cancel` may be called from any thread while
    another thread generates with it; the request then stops before its next denoising step with
    :class:`CancelledError`. A raised token stays raised: use a new one per request."""

    def __init__(self) -> None:
        lib = _native.lib()
        self._own(_new(lib.dg_cancel_token_new), lib.dg_cancel_token_free, "CancelToken")
        self._cancelled = False

    def cancel(self) -> None:
        """Raises the token. Thread-safe; a no-op on a closed token."""
        self._cancelled = True
        try:
            with self._handle.borrow() as ptr:
                _native.lib().dg_cancel_token_cancel(ptr)
        except NullArgError:
            pass

    @property
    def cancelled(self) -> bool:
        """Whether :meth:`cancel` was called."""
        return self._cancelled

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("cancelled" if self._cancelled else "live")
        return f"<diffgentor.CancelToken {state}>"


class Runtime(_Closeable):
    """A loaded ONNX Runtime with its execution provider. Thread-safe: share one per process.

    ``execution_provider``: "cpu", "cuda", "cuda:ID", "tensorrt" or "tensorrt:ID".
    ``ort_library``: path of libonnxruntime; default: DG_ORT_DYLIB_PATH, ORT_DYLIB_PATH, a copy next
    to libdiffgentor or the executable, the installed ``onnxruntime`` package's (``capi/``), then
    the system loader. ``intra_threads``: intra-op threads per session (None or 0:
    ONNX Runtime's default). ``allow_cpu_fallback``: use the CPU when the provider cannot be
    registered instead of raising :class:`EpUnavailableError`. ``options``: any
    ``dg_runtime_options_set`` key, e.g. ``{"sessions_per_graph": 2, "optimization": "all",
    "no_spinning": True}`` (values str, path, int, float or bool; None skips a key), applied after
    the other arguments, so a key given both ways takes its ``options`` value; an unknown key or a
    bad value raises :class:`InvalidArgError` naming it.

    Raises :class:`LibraryNotFoundError` when libdiffgentor cannot be found, :class:`BackendError`
    when ONNX Runtime cannot be loaded, :class:`EpUnavailableError` for an unusable provider.
    Pipelines keep their runtime alive inside the library, so closing it early is fine.
    """

    def __init__(
        self,
        execution_provider: str = "cpu",
        ort_library: Optional[PathLike] = None,
        intra_threads: Optional[int] = None,
        allow_cpu_fallback: bool = False,
        *,
        tensorrt_fp16: bool = False,
        tensorrt_engine_cache: Optional[PathLike] = None,
        options: Optional[Mapping[str, Any]] = None,
    ) -> None:
        # Encoded before anything is allocated, so a bad key or value raises without a handle to free.
        pairs = []
        for key, value in (options or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"options keys must be str, not {type(key).__name__}")
            if value is not None:
                pairs.append((_native.encode(key, "options key"),
                              _native.encode(_option_text(value, key), f"options[{key!r}]")))
        lib = _native.lib()
        opts = _new(lib.dg_runtime_options_new)
        try:
            check = _native.check
            check(lib.dg_runtime_options_set_execution_provider(
                opts, _native.encode(execution_provider, "execution_provider")))
            if ort_library is None:
                # pip-installed onnxruntime (the wheel's dependency), where the library would
                # otherwise only try the system loader.
                ort_library = _native.default_ort_library(_native.lib_path())
            if ort_library is not None:
                check(lib.dg_runtime_options_set_ort_library(opts, _native.encode(ort_library, "ort_library")))
            if intra_threads is not None:
                check(lib.dg_runtime_options_set_intra_threads(opts, _uint(intra_threads, "intra_threads")))
            check(lib.dg_runtime_options_set_allow_cpu_fallback(opts, bool(allow_cpu_fallback)))
            if tensorrt_fp16:
                check(lib.dg_runtime_options_set_tensorrt_fp16(opts, True))
            if tensorrt_engine_cache is not None:
                check(lib.dg_runtime_options_set_tensorrt_engine_cache(
                    opts, _native.encode(tensorrt_engine_cache, "tensorrt_engine_cache")))
            for key_b, value_b in pairs:
                check(lib.dg_runtime_options_set(opts, key_b, value_b))
            with _inflight.running():
                ptr = _new(lib.dg_runtime_new, opts)
        finally:
            lib.dg_runtime_options_free(opts)
        self._own(ptr, lib.dg_runtime_free, "Runtime")
        ep = (options or {}).get("execution_provider")
        self.execution_provider: str = ep if isinstance(ep, str) else execution_provider

    def load(self, model_dir: PathLike) -> "Pipeline":
        """Loads the model package in ``model_dir`` on this runtime (same as ``Pipeline(self, model_dir)``)."""
        return Pipeline(self, model_dir)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<diffgentor.Runtime {self.execution_provider!r}{state}>"


class BasePipeline(_Closeable):
    """What :class:`Pipeline` (a local model package) and :class:`Remote` (a remote image service)
    share: :meth:`generate`, :attr:`kind`, ``close()`` and ``with``; code that takes either can be
    annotated with it. Not made directly. Thread-safe: many threads may call :meth:`generate` on one pipeline at once
    (the GIL is released while the library works). ``close()`` while other threads generate is
    safe: the handle is freed when the last of them returns."""

    _kind: str

    def _own_pipeline(self, ptr: int, what: str) -> None:
        lib = _native.lib()
        self._own(ptr, lib.dg_pipeline_free, what)
        # A static string that never changes: read once, so `kind` works on a closed pipeline too.
        self._kind = (lib.dg_pipeline_kind(ptr) or b"").decode("ascii", errors="replace")

    @property
    def kind(self) -> str:
        """What draws the images: "local", "openai" or "gemini" (``dg_pipeline_kind``)."""
        return self._kind

    @overload
    def generate(self, prompt: str, *, negative_prompt: Optional[str] = ..., steps: Optional[int] = ...,
                 guidance_scale: Optional[float] = ..., width: Optional[int] = ..., height: Optional[int] = ...,
                 seed: Optional[int] = ..., num_images: Optional[int] = ..., scheduler: Optional[str] = ...,
                 eta: Optional[float] = ..., image: Optional[ImageInput] = ..., mask: Optional[ImageInput] = ...,
                 strength: Optional[float] = ..., image_guidance_scale: Optional[float] = ...,
                 plan: Optional[Plan] = ..., loras: Optional[LoraStack] = ...,
                 extra: Optional[Mapping[str, Any]] = ...,
                 progress: Optional[ProgressCallback] = ..., cancel: Optional[CancelToken] = ...,
                 best_effort: bool = ..., save: Optional[PathLike] = ..., jpeg_quality: int = ...,
                 output: "Literal['raw']") -> ImageList[RawImage]: ...

    @overload
    def generate(self, prompt: str, *, negative_prompt: Optional[str] = ..., steps: Optional[int] = ...,
                 guidance_scale: Optional[float] = ..., width: Optional[int] = ..., height: Optional[int] = ...,
                 seed: Optional[int] = ..., num_images: Optional[int] = ..., scheduler: Optional[str] = ...,
                 eta: Optional[float] = ..., image: Optional[ImageInput] = ..., mask: Optional[ImageInput] = ...,
                 strength: Optional[float] = ..., image_guidance_scale: Optional[float] = ...,
                 plan: Optional[Plan] = ..., loras: Optional[LoraStack] = ...,
                 extra: Optional[Mapping[str, Any]] = ...,
                 progress: Optional[ProgressCallback] = ..., cancel: Optional[CancelToken] = ...,
                 best_effort: bool = ..., save: Optional[PathLike] = ..., jpeg_quality: int = ...,
                 output: "Literal['numpy']") -> "ImageList[numpy.ndarray]": ...

    @overload
    def generate(self, prompt: str, *, negative_prompt: Optional[str] = ..., steps: Optional[int] = ...,
                 guidance_scale: Optional[float] = ..., width: Optional[int] = ..., height: Optional[int] = ...,
                 seed: Optional[int] = ..., num_images: Optional[int] = ..., scheduler: Optional[str] = ...,
                 eta: Optional[float] = ..., image: Optional[ImageInput] = ..., mask: Optional[ImageInput] = ...,
                 strength: Optional[float] = ..., image_guidance_scale: Optional[float] = ...,
                 plan: Optional[Plan] = ..., loras: Optional[LoraStack] = ...,
                 extra: Optional[Mapping[str, Any]] = ...,
                 progress: Optional[ProgressCallback] = ..., cancel: Optional[CancelToken] = ...,
                 best_effort: bool = ..., save: Optional[PathLike] = ..., jpeg_quality: int = ...,
                 output: "Literal['pil']") -> "ImageList[PIL.Image.Image]": ...

    @overload
    def generate(self, prompt: str, *, negative_prompt: Optional[str] = ..., steps: Optional[int] = ...,
                 guidance_scale: Optional[float] = ..., width: Optional[int] = ..., height: Optional[int] = ...,
                 seed: Optional[int] = ..., num_images: Optional[int] = ..., scheduler: Optional[str] = ...,
                 eta: Optional[float] = ..., image: Optional[ImageInput] = ..., mask: Optional[ImageInput] = ...,
                 strength: Optional[float] = ..., image_guidance_scale: Optional[float] = ...,
                 plan: Optional[Plan] = ..., loras: Optional[LoraStack] = ...,
                 extra: Optional[Mapping[str, Any]] = ...,
                 progress: Optional[ProgressCallback] = ..., cancel: Optional[CancelToken] = ...,
                 best_effort: bool = ..., save: Optional[PathLike] = ..., jpeg_quality: int = ...,
                 output: "Literal['png', 'jpeg']") -> ImageList[bytes]: ...

    @overload
    def generate(self, prompt: str, *, negative_prompt: Optional[str] = ..., steps: Optional[int] = ...,
                 guidance_scale: Optional[float] = ..., width: Optional[int] = ..., height: Optional[int] = ...,
                 seed: Optional[int] = ..., num_images: Optional[int] = ..., scheduler: Optional[str] = ...,
                 eta: Optional[float] = ..., image: Optional[ImageInput] = ..., mask: Optional[ImageInput] = ...,
                 strength: Optional[float] = ..., image_guidance_scale: Optional[float] = ...,
                 plan: Optional[Plan] = ..., loras: Optional[LoraStack] = ...,
                 extra: Optional[Mapping[str, Any]] = ...,
                 progress: Optional[ProgressCallback] = ..., cancel: Optional[CancelToken] = ...,
                 best_effort: bool = ..., save: Optional[PathLike] = ..., jpeg_quality: int = ...,
                 output: None = ...) -> ImageList[Any]: ...

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: Optional[str] = None,
        steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        width: Optional[int] = None,
        height: Optional[int] = None,
        seed: Optional[int] = None,
        num_images: Optional[int] = None,
        scheduler: Optional[str] = None,
        eta: Optional[float] = None,
        image: Optional[ImageInput] = None,
        mask: Optional[ImageInput] = None,
        strength: Optional[float] = None,
        image_guidance_scale: Optional[float] = None,
        plan: Optional[Plan] = None,
        loras: Optional[LoraStack] = None,
        extra: Optional[Mapping[str, Any]] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        best_effort: bool = False,
        save: Optional[PathLike] = None,
        jpeg_quality: int = 90,
        output: Optional[OutputKind] = None,
    ) -> ImageList[Any]:
        """Runs one request (text-to-image, or an edit with ``image``) and returns its images (an
        :class:`ImageList`, a list with the request's ``seed`` and the generator's ``metadata``).

        Unset arguments keep diffusers' defaults: 50 steps, guidance 7.5, one image, the package's
        size and scheduler, a random seed (a remote service: its own). ``extra`` sets any parameter
        by its C API key (``dg_params_set``: "rng", "scheduler.<diffusers_key>", ...; values are
        strings, numbers are formatted) before the keyword arguments, which win. ``progress`` is
        called on this thread after every step; returning False cancels (:class:`CancelledError`), and an
        exception it raises cancels the request and is re-raised here. ``cancel`` may be raised
        from another thread. ``output``: "pil", "numpy" (uint8 [H, W, 3]) or "raw"
        (:class:`RawImage`); None picks Pillow if installed, else numpy, else raw; "png" or "jpeg":
        ``bytes`` encoded by the library (JPEG at ``jpeg_quality``, 1..100).

        Editing: ``image`` (a :class:`RawImage`, PIL image or numpy uint8 array; grey, RGB or RGBA)
        makes the request img2img, ``mask`` too (same size; white = repaint) inpainting, both
        copied. ``strength`` (0, 1] is how much of the image is re-noised (default 0.8 for img2img,
        1.0 for inpainting); ``image_guidance_scale`` is InstructPix2Pix's (default 1.5). ``plan``
        is a progressive plan (docs/editing.md), its JSON text or a dict.

        LoRA: ``loras`` is the request's whole stack of adapters loaded with
        :meth:`Pipeline.load_lora`, in order: names (strength 1.0) or ``(name, strength)`` pairs,
        e.g. ``[("style", 0.8), ("hero", -0.4)]``; ``[]`` runs without LoRA; None (the default)
        uses the pipeline's default stack (:meth:`Pipeline.set_default_loras`). A non-finite
        strength, a name twice or more than 10 adapters is :class:`InvalidArgError`, and so is a
        name that is not loaded (listing the loaded ones). ``save``: the library
        also writes each image there, atomically (parent directories created): JPEG at
        ``jpeg_quality`` when the name ends in .jpg/.jpeg, else PNG; several images as
        NAME_00.EXT, NAME_01.EXT, ... like ``dg generate``; ``ImageList.paths`` lists the files.

        A remote service refuses fields it has no equivalent for (a negative prompt, a seed, a
        scheduler, changed steps or guidance, ...) with :class:`UnsupportedError` naming them;
        ``best_effort=True`` (the "best_effort" parameter) sends the request without them and lists
        them in ``metadata["ignored"]``. A local pipeline honours every field: there it does nothing.
        """
        kind = resolve_output(output)
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise TypeError(f"cancel must be a diffgentor.CancelToken, not {type(cancel).__name__}")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        if not isinstance(best_effort, bool):
            raise TypeError(f"best_effort must be a bool, not {type(best_effort).__name__}")
        # Checked (and ctypes-range-checked) in Python: c_uint8 would wrap 300 to 44.
        quality = _uint(jpeg_quality, "jpeg_quality", 255)
        save_path = None if save is None else _native.encode(save, "save")
        plan_text = None
        if plan is not None:
            plan_text = _native.encode(plan if isinstance(plan, str) else json.dumps(dict(plan)), "plan")
        init = None if image is None else pixel_buffer(image, "image")
        mask_buf = None if mask is None else pixel_buffer(mask, "mask")
        if loras is not None:
            _lora.normalize(loras, "loras")  # type errors before any library call
        lib = _native.lib()
        with _inflight.running() as call:
            params = _new(lib.dg_params_new)
            try:
                self._fill(lib, params, prompt, negative_prompt, steps, guidance_scale, width, height,
                           seed, num_images, scheduler, eta, extra, best_effort)
                check = _native.check
                if init is not None:
                    check(lib.dg_params_set_init_image(params, init.pointer, init.width, init.height,
                                                       init.channels, init.stride))
                if mask_buf is not None:
                    check(lib.dg_params_set_mask(params, mask_buf.pointer, mask_buf.width, mask_buf.height,
                                                 mask_buf.channels, mask_buf.stride))
                if strength is not None:
                    check(lib.dg_params_set_strength(params, _number(strength, "strength")))
                if image_guidance_scale is not None:
                    check(lib.dg_params_set_image_guidance_scale(
                        params, _number(image_guidance_scale, "image_guidance_scale")))
                if plan_text is not None:
                    check(lib.dg_params_set_plan(params, plan_text))
                if loras is not None:
                    _lora.apply(lib, params, loras)
                return self._run(lib, params, progress, cancel, kind, call, save_path, quality)
            finally:
                lib.dg_params_free(params)

    @staticmethod
    def _fill(lib: Any, params: int, prompt: str, negative_prompt: Optional[str], steps: Optional[int],
              guidance_scale: Optional[float], width: Optional[int], height: Optional[int],
              seed: Optional[int], num_images: Optional[int], scheduler: Optional[str],
              eta: Optional[float], extra: Optional[Mapping[str, Any]], best_effort: bool) -> None:
        check, enc = _native.check, _native.encode
        if extra is not None:
            for key, value in extra.items():
                if not isinstance(key, str):
                    raise TypeError(f"extra keys must be str, not {type(key).__name__}")
                check(lib.dg_params_set(params, enc(key, "extra key"), enc(_param_text(value, key), f"extra[{key!r}]")))
        check(lib.dg_params_set_prompt(params, enc(prompt, "prompt")))
        if negative_prompt is not None:
            check(lib.dg_params_set_negative_prompt(params, enc(negative_prompt, "negative_prompt")))
        if steps is not None:
            check(lib.dg_params_set_steps(params, _uint(steps, "steps")))
        if guidance_scale is not None:
            check(lib.dg_params_set_guidance_scale(params, _number(guidance_scale, "guidance_scale")))
        if width is not None and height is not None:
            check(lib.dg_params_set_size(params, _uint(width, "width"), _uint(height, "height")))
        elif width is not None:
            check(lib.dg_params_set(params, b"width", str(_uint(width, "width")).encode()))
        elif height is not None:
            check(lib.dg_params_set(params, b"height", str(_uint(height, "height")).encode()))
        if seed is not None:
            check(lib.dg_params_set_seed(params, _uint(seed, "seed", _U64)))
        if num_images is not None:
            check(lib.dg_params_set_num_images(params, _uint(num_images, "num_images")))
        if scheduler is not None:
            check(lib.dg_params_set_scheduler(params, enc(scheduler, "scheduler")))
        if eta is not None:
            check(lib.dg_params_set(params, b"eta", repr(_number(eta, "eta")).encode()))
        if best_effort:  # False leaves extra={"best_effort": ...} alone
            check(lib.dg_params_set(params, b"best_effort", b"true"))

    def _run(self, lib: Any, params: int, progress: Optional[ProgressCallback],
             cancel: Optional[CancelToken], kind: str, call: _inflight.Call,
             save: Optional[bytes] = None, quality: int = 90) -> ImageList[Any]:
        raised: List[BaseException] = []

        def trampoline(p: Any, _user_data: Any) -> bool:
            # Runs on this thread, inside dg_pipeline_generate. Nothing may escape into C: an
            # exception is kept, the request cancelled, and the exception re-raised below.
            try:
                if raised or progress is None:
                    return not raised
                if _inflight.stopping():  # interpreter exit: stop, and run no user code
                    return False
                c = p.contents
                size = c.struct_size
                report = Progress(
                    c.step,
                    c.total if size >= _TOTAL_END else 0,
                    c.elapsed_seconds if size >= _ELAPSED_END else 0.0,
                    c.stage if size >= _STAGE_END else 1,
                    c.stages if size >= _STAGES_END else 1,
                )
                answer = progress(report)
                return answer is None or bool(answer)
            except BaseException as e:  # noqa: B036 - KeyboardInterrupt too: it is re-raised
                if not raised:
                    raised.append(e)
                return False

        def invoke(pipe: int, callback: Any, token: Optional[int], out: Any) -> Any:
            return lib.dg_pipeline_generate(pipe, params, callback, None, token, out)

        with _native_run(lib, call, self._handle, cancel, trampoline, raised, progress is not None,
                         _native.PROGRESS_FN, invoke, lib.dg_images_free, "images") as images:
            result = []
            count = lib.dg_images_count(images)
            paths = [] if save is None else _save_names(save, count)
            for i in range(count):
                img = lib.dg_images_get(images, i)
                if kind in ENCODED_KINDS:
                    result.append(_encode(lib, img, kind, quality))
                else:
                    result.append(convert(lib.dg_image_width(img), lib.dg_image_height(img),
                                          lib.dg_image_channels(img), lib.dg_image_stride(img),
                                          lib.dg_image_pixels(img), kind))
                if paths:
                    _write(lib, img, paths[i], quality)
            return ImageList(result, lib.dg_images_seed(images), parse_metadata(lib.dg_images_metadata(images)),
                             [os.fsdecode(p) for p in paths])


@contextmanager
def _native_run(lib: Any, call: _inflight.Call, handle: _Handle, cancel: Optional[CancelToken],
                trampoline: Callable[..., bool], raised: List[BaseException], wanted: bool, fn_type: Any,
                invoke: Callable[[int, Any, Optional[int], Any], Any], free: Callable[[Any], None],
                what: str) -> Iterator[int]:
    """Runs one request of a handle (a pipeline's generate, a VLM's) with its callback trampoline:
    ``invoke(handle, callback, token, out)`` makes the C call. Yields the result, freed with ``free``
    afterwards; an exception the trampoline kept is raised instead, and a C error as ``Error``."""
    # A signal's exception (Ctrl-C's KeyboardInterrupt) can be raised as the trampoline is entered,
    # before its `try`: ctypes then reports it to sys.unraisablehook, where _capture_unraisable
    # routes it into `raised`, and the next callback cancels the request. On the main thread the
    # trampoline runs even when the caller gave no callback (`wanted` false), so Ctrl-C stops a
    # request at its next step instead of after the whole request.
    if wanted or threading.current_thread() is threading.main_thread():
        trampoline._diffgentor_raised = raised  # type: ignore[attr-defined]
        _capture_unraisable()
        callback = fn_type(trampoline)
    else:
        callback = fn_type()
    out = ctypes.c_void_p()
    # Every request gets a token (the caller's, else its own) so that interpreter exit can stop it
    # without needing the GIL (see _inflight).
    own_token = _new(lib.dg_cancel_token_new) if cancel is None else None
    active = _active_trampolines()
    active.append(trampoline)
    try:
        with handle.borrow() as ptr, _borrow_optional(cancel) as token:
            token = token if own_token is None else own_token
            with _inflight.cancellable(call, functools.partial(lib.dg_cancel_token_cancel, token)):
                err = invoke(ptr, callback, token, ctypes.byref(out))
    finally:
        active.pop()
        if own_token is not None:
            lib.dg_cancel_token_free(own_token)
    result = out.value
    try:
        if raised:
            if err:
                lib.dg_error_free(err)
            first = raised[0]
            raised.clear()  # no cycle through the traceback
            raise first
        _native.check(err)
        assert result, f"the library returned success without {what}"
        yield result
    finally:
        free(result)


def _is_jpeg(path: bytes) -> bool:
    return os.path.splitext(path)[1].lower() in (b".jpg", b".jpeg")


def _save_names(path: bytes, count: int) -> List[bytes]:
    """The files ``generate(save=path)`` writes: ``path`` for one image, else NAME_00.EXT, ... (as
    ``dg generate`` names them; EXT .png when ``path`` has none)."""
    if count == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [stem + b"_%02d" % i + (ext or b".png") for i in range(count)]


def _write(lib: Any, img: int, path: bytes, quality: int) -> None:
    """Writes one library image to ``path`` atomically (``dg_image_write_png``/``_jpeg``)."""
    if _is_jpeg(path):
        _native.check(lib.dg_image_write_jpeg(img, path, quality))
    else:
        _native.check(lib.dg_image_write_png(img, path))


def _encode(lib: Any, img: int, kind: str, quality: int) -> bytes:
    """One library image encoded by the library (``dg_image_encode_png``/``_jpeg``) as bytes. The
    ``dg_buffer_t`` is freed on every path: success, an encoding error, a failed copy."""
    buf = ctypes.c_void_p()
    try:
        if kind == "png":
            _native.check(lib.dg_image_encode_png(img, ctypes.byref(buf)))
        else:
            _native.check(lib.dg_image_encode_jpeg(img, quality, ctypes.byref(buf)))
        size = lib.dg_buffer_len(buf)
        data = lib.dg_buffer_data(buf)
        return ctypes.string_at(data, size) if size else b""
    finally:
        lib.dg_buffer_free(buf)  # NULL (nothing encoded) is a no-op


class Pipeline(BasePipeline):
    """A model package loaded on a runtime (``kind`` "local"). Thread-safe: many threads may call
    :meth:`generate` on one pipeline at once (the GIL is released while the library works).
    ``close()`` while other threads generate is safe: the handle is freed when the last of them
    returns."""

    def __init__(self, runtime: Runtime, model_dir: PathLike) -> None:
        if not isinstance(runtime, Runtime):
            raise TypeError(f"runtime must be a diffgentor.Runtime, not {type(runtime).__name__}")
        lib = _native.lib()
        path = _native.encode(model_dir, "model_dir")
        with _inflight.running(), runtime._handle.borrow() as rt:
            ptr = _new(lib.dg_pipeline_load, rt, path)
        self._own_pipeline(ptr, "Pipeline")
        self.runtime: Runtime = runtime
        self.model_dir: str = os.fsdecode(path)

    def load_lora(self, name: str, path: PathLike, *, allow_partial: bool = False) -> None:
        """Loads the LoRA file at ``path`` (safetensors: diffusers/PEFT, kohya or LyCORIS naming)
        as adapter ``name`` (1 to 128 letters, digits, ``_``, ``-`` or ``.``), replacing one of that
        name. ``allow_partial`` skips tensors that match no weight of the model instead of failing.
        Requests then pick it with ``generate(loras=...)`` or the default stack; a request without
        a stack still gives the base model's pixels. A missing file is :class:`IoError`; a bad
        name, a file that is not safetensors or one made for another model
        :class:`InvalidArgError`. Thread-safe (may run while other threads generate)."""
        lib = _native.lib()
        with _inflight.running(), self._handle.borrow() as ptr:
            _lora.load(lib, ptr, name, path, allow_partial)

    def unload_lora(self, name: str) -> None:
        """Unloads adapter ``name`` and takes it out of the default stack
        (:class:`InvalidArgError` when no adapter of that name is loaded)."""
        lib = _native.lib()
        with _inflight.running(), self._handle.borrow() as ptr:
            _lora.unload(lib, ptr, name)

    def loras(self) -> List[Dict[str, Any]]:
        """The loaded adapters, by name: dicts with "name", "path", "format" ("diffusers",
        "kohya", ...), "layers" (weights changed per component, e.g. ``{"unet": 40}``),
        "unmatched" (tensors skipped under ``allow_partial``) and "default_strength" (its strength
        in the default stack, None when it is not in it)."""
        lib = _native.lib()
        with _inflight.running(), self._handle.borrow() as ptr:
            adapters = _lora.listing(lib, ptr).get("adapters", [])
        return [dict(a) for a in adapters]

    def default_loras(self) -> List[Tuple[str, float]]:
        """The default stack (:meth:`set_default_loras`), in order, as (name, strength) pairs."""
        lib = _native.lib()
        with _inflight.running(), self._handle.borrow() as ptr:
            stack = _lora.listing(lib, ptr).get("default_stack", [])
        return [(str(u["name"]), float(u["strength"])) for u in stack]

    def set_default_loras(self, stack: LoraStack) -> None:
        """Sets the stack of requests that name none (``generate`` without ``loras``); ``[]``
        clears it. Every adapter must be loaded, at most 10, each once, with finite strengths (else
        :class:`InvalidArgError`, and the default stack is unchanged)."""
        lib = _native.lib()
        with _inflight.running(), self._handle.borrow() as ptr:
            _lora.set_default(lib, ptr, stack)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<diffgentor.Pipeline {self.model_dir!r}{state}>"


_hook_lock = threading.Lock()
_thread_state = threading.local()


def _active_trampolines() -> List[Any]:
    """This thread's running requests' trampolines (a stack: a progress callback may generate)."""
    try:
        return _thread_state.trampolines  # type: ignore[no-any-return]
    except AttributeError:
        _thread_state.trampolines = []
        return _thread_state.trampolines  # type: ignore[no-any-return]


def _capture_unraisable() -> None:
    """Makes sure sys.unraisablehook hands exceptions escaping a diffgentor progress trampoline to
    that request (see Pipeline._run); everything else goes to the hook that was there before."""
    with _hook_lock:
        previous = sys.unraisablehook
        if getattr(previous, "_diffgentor_capture", False):
            return

        def hook(unraisable: Any) -> None:
            # Python <= 3.12 passes the callback as `object`; 3.13 passes None and names it in err_msg.
            sink = getattr(unraisable.object, "_diffgentor_raised", None)
            if sink is None and unraisable.object is None:
                message = getattr(unraisable, "err_msg", None) or ""
                for trampoline in reversed(_active_trampolines()):
                    if "ctypes callback" in message and repr(trampoline) in message:
                        sink = trampoline._diffgentor_raised
                        break
            if isinstance(sink, list) and unraisable.exc_value is not None:
                if not sink:
                    sink.append(unraisable.exc_value)
            else:
                previous(unraisable)

        hook._diffgentor_capture = True  # type: ignore[attr-defined]
        sys.unraisablehook = hook


@contextmanager
def _borrow_optional(token: Optional[CancelToken]) -> Iterator[Optional[int]]:
    if token is None:
        yield None
    else:
        with token._handle.borrow() as ptr:
            yield ptr


def library_version() -> str:
    """The loaded libdiffgentor's version ("MAJOR.MINOR.PATCH"); loads the library if needed."""
    return str(_native.lib().dg_version().decode("ascii"))


def library_path() -> str:
    """The file libdiffgentor was loaded from; loads the library if needed."""
    return _native.lib_path()
