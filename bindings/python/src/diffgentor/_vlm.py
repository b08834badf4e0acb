"""Vision-language models (``dg_vlm_*``): captioning, visual question answering and prompt
enhancement. :class:`Vlm` is a loaded model, :meth:`Vlm.generate` answers, :class:`VlmResult` is
the answer."""

from __future__ import annotations

import ctypes
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union, cast

from . import _inflight, _native
from ._images import RawImage, pixel_buffer
from ._runtime import (
    CancelToken,
    PathLike,
    Runtime,
    _Closeable,
    _native_run,
    _new,
    _number,
    _param_text,
    _uint,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy
    import PIL.Image

_U64 = (1 << 64) - 1

#: An image for a VLM request: a file path (PNG, JPEG or WebP, read by the library), the bytes of
#: such a file (decoded by the library), or decoded pixels as ``generate(image=...)`` takes them: a
#: :class:`RawImage`, a ``PIL.Image.Image`` or a numpy ``uint8`` array (H, W), (H, W, 1), (H, W, 3)
#: or (H, W, 4).
VlmImage = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, RawImage, "numpy.ndarray", "PIL.Image.Image"]

#: One message of ``generate(messages=...)``: ``{"role": "user", "content": ...}`` where content is
#: a str, an image, or a list of str and images in the order the model reads them.
Message = Mapping[str, Any]


class VlmToken:
    """One new token, passed to the ``on_token`` callback."""

    __slots__ = ("id", "text", "index")

    def __init__(self, id: int, text: str, index: int) -> None:  # noqa: A002 - the token's id
        #: The token id.
        self.id: int = id
        #: The text this token completes; often "" (inside a UTF-8 character, a special token, text
        #: held back because it may begin a stop string). The texts add up to the answer's text.
        self.text: str = text
        #: New tokens so far, this one included (1 for the first).
        self.index: int = index

    def __repr__(self) -> str:
        return f"VlmToken(id={self.id}, text={self.text!r}, index={self.index})"


#: ``on_token`` callback type: return False to cancel the request (None or True go on).
TokenCallback = Callable[[VlmToken], Optional[bool]]


class VlmTimings:
    """Where the time of one request went, in seconds."""

    __slots__ = ("preprocess", "vision", "first_token", "decode", "total", "tokens_per_second")

    def __init__(self, values: Mapping[str, float]) -> None:
        #: Chat template, tokenizer and image preprocessing.
        self.preprocess: float = float(values.get("preprocess_s", 0.0))
        #: The vision encoder.
        self.vision: float = float(values.get("vision_s", 0.0))
        #: From the start of the request to the first new token (time to first token).
        self.first_token: float = float(values.get("first_token_s", 0.0))
        #: From the first new token to the last.
        self.decode: float = float(values.get("decode_s", 0.0))
        self.total: float = float(values.get("total_s", 0.0))
        #: Decoding speed after the first token (0 for fewer than two tokens).
        self.tokens_per_second: float = float(values.get("tokens_per_second", 0.0))

    def as_dict(self) -> Dict[str, float]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __repr__(self) -> str:
        return "VlmTimings(" + ", ".join(f"{k}={v:.4g}" for k, v in self.as_dict().items()) + ")"


class VlmResult:
    """The answer of one request."""

    __slots__ = ("text", "token_ids", "prompt_tokens", "finish_reason", "timings", "enhanced_prompt")

    def __init__(self, text: str, token_ids: List[int], prompt_tokens: int, finish_reason: str,
                 timings: VlmTimings, enhanced_prompt: str) -> None:
        #: The answer, special tokens skipped, cut before a stop string.
        self.text: str = text
        #: The new token ids (an end-of-sequence token that ended generation included).
        self.token_ids: List[int] = token_ids
        #: Tokens in the prompt, image tokens included.
        self.prompt_tokens: int = prompt_tokens
        #: "stop" (an end-of-sequence token or a stop string) or "length" (max_new_tokens or the
        #: model's context).
        self.finish_reason: str = finish_reason
        self.timings: VlmTimings = timings
        #: The answer read as a prompt for a generator: whitespace, a code fence, a "Prompt:" label
        #: and wrapping quotes removed ("" when nothing is left). What :meth:`Vlm.enhance` wants.
        self.enhanced_prompt: str = enhanced_prompt

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return (f"VlmResult(text={self.text!r}, token_ids={self.token_ids!r}, prompt_tokens={self.prompt_tokens}, "
                f"finish_reason={self.finish_reason!r})")


_TEXT_END = _native.DgVlmToken.text_len.offset + ctypes.sizeof(ctypes.c_size_t)


class Vlm(_Closeable):
    """A vision-language model package loaded on a runtime: onnxruntime-genai (Qwen2.5-VL style),
    transformers.js or optimum vision-encoder-decoder layout (told from the files; a directory that
    matches none raises :class:`ModelError` listing what it found). Thread-safe: many threads may
    call :meth:`generate` at once (the GIL is released while the library works). ``close()`` while
    other threads generate is safe: the handle is freed when the last of them returns.

    ::

        with diffgentor.Runtime() as rt, diffgentor.Vlm(rt, "models/tiny-qwen2.5-vl") as vlm:
            print(vlm.generate("What is in the picture?", images=["photo.png"]).text)
    """

    def __init__(self, runtime: Runtime, model_dir: PathLike) -> None:
        if not isinstance(runtime, Runtime):
            raise TypeError(f"runtime must be a diffgentor.Runtime, not {type(runtime).__name__}")
        lib = _native.lib()
        path = _native.encode(model_dir, "model_dir")
        with _inflight.running(), runtime._handle.borrow() as rt:
            ptr = _new(lib.dg_vlm_load, rt, path)
        self._own(ptr, lib.dg_vlm_free, "Vlm")
        #: What the model is (``dg_vlm_info``): "layout", "context_length", "eos_ids", "chat"
        #: and "caption_prompt".
        self.info: Dict[str, Any] = json.loads((lib.dg_vlm_info(ptr) or b"{}").decode("utf-8"))
        self.runtime: Runtime = runtime
        self.model_dir: str = os.fsdecode(path)

    @property
    def layout(self) -> str:
        """"onnxruntime-genai", "transformers.js" or "optimum vision-encoder-decoder"."""
        return str(self.info.get("layout", ""))

    @property
    def context_length(self) -> int:
        """The most tokens, prompt and answer, one sequence may have."""
        return int(self.info.get("context_length", 0))

    @property
    def caption_prompt(self) -> str:
        """The prompt :meth:`caption` (and ``dg caption``) asks for a caption with."""
        return str(self.info.get("caption_prompt", ""))

    def generate(
        self,
        prompt: Optional[str] = None,
        images: Iterable[VlmImage] = (),
        *,
        messages: Optional[Sequence[Message]] = None,
        system: Optional[str] = None,
        max_new_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        repetition_penalty: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        extra: Optional[Mapping[str, Any]] = None,
        on_token: Optional[TokenCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> VlmResult:
        """Answers one request and returns a :class:`VlmResult`.

        The conversation is ``messages`` (``{"role": ..., "content": str | image | [str | image,
        ...]}``), then, when ``images`` or ``prompt`` are given, one user message of the images
        followed by the prompt. ``images`` are paths, file bytes or pixels (:data:`VlmImage`).
        ``system`` puts a system message first (replacing any other). ``max_new_tokens`` (1..32768,
        default 128); ``temperature`` 0 (the default) is greedy decoding; ``top_k``, ``top_p``,
        ``repetition_penalty`` and ``seed`` shape sampling; ``stop`` is one or more strings (at
        most 16) the answer ends before; ``extra`` sets any ``dg_vlm_params_set`` key.

        ``on_token(token)`` is called with every new :class:`VlmToken`; returning False cancels
        the request (:class:`CancelledError`), and an exception raised inside it cancels the
        request and is re-raised here. ``cancel`` may be raised from any thread: the request stops
        before its next token. A bad key or value raises :class:`InvalidArgError` naming it, as
        does a request the model cannot take (no message, an image smaller than one patch, a
        prompt longer than the context).
        """
        settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, seed=seed, system=system)
        return self._generate(None, messages, prompt, images, settings, stop, extra, on_token, cancel)

    def caption(self, images: Union[VlmImage, Iterable[VlmImage]], prompt: Optional[str] = None,
                **kwargs: Any) -> VlmResult:
        """Describes ``images`` (one image or several) with ``prompt``, by default the model's
        caption prompt (:attr:`caption_prompt`); ``kwargs`` as :meth:`generate`."""
        listed = cast(Iterable[VlmImage], [images] if _is_single_image(images) else images)
        return self.generate(self.caption_prompt if prompt is None else prompt, listed, **kwargs)

    def enhance(self, style: str, instruction: str, image: Optional[VlmImage] = None, *,
                system: Optional[str] = None, max_new_tokens: Optional[int] = None,
                temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                repetition_penalty: Optional[float] = None, seed: Optional[int] = None,
                stop: Union[None, str, Sequence[str]] = None, extra: Optional[Mapping[str, Any]] = None,
                on_token: Optional[TokenCallback] = None, cancel: Optional[CancelToken] = None) -> VlmResult:
        """Prompt enhancement: asks the model to rewrite ``instruction`` (an edit instruction or a
        text-to-image prompt) into a better prompt for a generator of ``style`` ("qwen_image_edit",
        "flux2", "glm_image" or "t2i"; another raises :class:`InvalidArgError` listing them),
        reading ``image`` when given. The rewritten prompt is the result's ``enhanced_prompt``.
        ``system`` replaces the style's system prompt; ``max_new_tokens`` defaults to 256; the
        other arguments as :meth:`generate`."""
        settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                        repetition_penalty=repetition_penalty, seed=seed, system=system)
        return self._generate((style, instruction, image), None, None, (), settings, stop, extra, on_token, cancel)

    def _generate(self, enhance: Optional[Any], messages: Optional[Sequence[Message]], prompt: Optional[str],
                  images: Iterable[VlmImage], settings: Mapping[str, Any], stop: Union[None, str, Sequence[str]],
                  extra: Optional[Mapping[str, Any]], on_token: Optional[TokenCallback],
                  cancel: Optional[CancelToken]) -> VlmResult:
        if cancel is not None and not isinstance(cancel, CancelToken):
            raise TypeError(f"cancel must be a diffgentor.CancelToken, not {type(cancel).__name__}")
        if on_token is not None and not callable(on_token):
            raise TypeError("on_token must be callable")
        if prompt is not None and not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
        if _is_single_image(images):
            raise TypeError("images must be a list of images (use [image] for one)")
        # Everything is converted before the params exist, so a TypeError leaves nothing to free.
        parts: List[Any] = []  # (role bytes, kind, payload)
        for i, message in enumerate(messages or ()):
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content'")
            role = _native.encode(message["role"], f"messages[{i}]['role']")
            content = message["content"]
            items = content if isinstance(content, (list, tuple)) else [content]
            for j, item in enumerate(items):
                parts.append(_part(role, item, f"messages[{i}]['content'][{j}]"))
        for i, image in enumerate(images):
            parts.append(_image_part(b"user", image, f"images[{i}]"))
        if prompt is not None:
            parts.append((b"user", "text", _native.encode(prompt, "prompt")))
        keyed = []
        for key, value in settings.items():
            if value is None:
                continue
            if key in ("top_k", "max_new_tokens"):
                text = str(_uint(value, key))
            elif key == "seed":
                text = str(_uint(value, key, _U64))
            elif key == "system":
                if not isinstance(value, str):
                    raise TypeError(f"system must be a str, not {type(value).__name__}")
                text = value
            else:
                text = repr(_number(value, key))
            keyed.append((key.encode(), _native.encode(text, key)))
        for s in [stop] if isinstance(stop, str) else (stop or ()):
            keyed.append((b"stop", _native.encode(s, "stop")))
        for key, value in (extra or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"extra keys must be str, not {type(key).__name__}")
            keyed.append((_native.encode(key, "extra key"), _native.encode(_param_text(value, key), f"extra[{key!r}]")))
        enhance_args = None
        if enhance is not None:
            style, instruction, image = enhance
            enhance_args = (_native.encode(style, "style"), _native.encode(instruction, "instruction"),
                            None if image is None else _image_part(b"user", image, "image"))

        lib = _native.lib()
        with _inflight.running() as call:
            if enhance_args is None:
                params = _new(lib.dg_vlm_params_new)
            else:
                params = _new(lib.dg_vlm_params_new_enhance, enhance_args[0], enhance_args[1])
                if enhance_args[2] is not None:
                    parts.insert(0, enhance_args[2])
            try:
                for role, kind, payload in parts:
                    _add(lib, params, role, kind, payload)
                for key_b, value_b in keyed:
                    _native.check(lib.dg_vlm_params_set(params, key_b, value_b))
                return self._run(lib, params, on_token, cancel, call)
            finally:
                lib.dg_vlm_params_free(params)

    def _run(self, lib: Any, params: int, on_token: Optional[TokenCallback], cancel: Optional[CancelToken],
             call: _inflight.Call) -> VlmResult:
        raised: List[BaseException] = []

        def trampoline(t: Any, _user_data: Any) -> bool:
            # Runs on this thread, inside dg_vlm_generate. Nothing may escape into C: an exception
            # is kept, the request cancelled, and the exception re-raised below.
            try:
                if raised or on_token is None:
                    return not raised
                if _inflight.stopping():  # interpreter exit: stop, and run no user code
                    return False
                c = t.contents
                text = ""
                if c.struct_size >= _TEXT_END and c.text_len:
                    text = ctypes.string_at(c.text, c.text_len).decode("utf-8", errors="replace")
                answer = on_token(VlmToken(c.token_id, text, c.index))
                return answer is None or bool(answer)
            except BaseException as e:  # noqa: B036 - KeyboardInterrupt too: it is re-raised
                if not raised:
                    raised.append(e)
                return False

        def invoke(vlm: int, callback: Any, token: Optional[int], out: Any) -> Any:
            return lib.dg_vlm_generate(vlm, params, callback, None, token, out)

        with _native_run(lib, call, self._handle, cancel, trampoline, raised, on_token is not None,
                         _native.VLM_TOKEN_FN, invoke, lib.dg_vlm_result_free, "a result") as result:
            return _take(lib, result)

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<diffgentor.Vlm {self.model_dir!r} {self.layout}{state}>"


def _take(lib: Any, result: int) -> VlmResult:
    """A C result copied into Python objects (the caller frees it)."""
    size = ctypes.c_size_t()
    text_ptr = lib.dg_vlm_result_text(result, ctypes.byref(size))
    text = ctypes.string_at(text_ptr, size.value).decode("utf-8", errors="replace") if size.value else ""
    count = ctypes.c_size_t()
    ids_ptr = lib.dg_vlm_result_token_ids(result, ctypes.byref(count))
    token_ids = [int(ids_ptr[i]) for i in range(count.value)] if ids_ptr else []
    try:
        timings = json.loads((lib.dg_vlm_result_timings(result) or b"{}").decode("utf-8"))
    except ValueError:  # the library writes this JSON itself: never in practice
        timings = {}
    return VlmResult(
        text,
        token_ids,
        int(lib.dg_vlm_result_prompt_tokens(result)),
        (lib.dg_vlm_result_finish_reason(result) or b"").decode("ascii", errors="replace"),
        VlmTimings(timings if isinstance(timings, dict) else {}),
        (lib.dg_vlm_result_enhanced_prompt(result) or b"").decode("utf-8", errors="replace"),
    )


def _is_single_image(value: Any) -> bool:
    """Whether ``value`` is one image rather than a list of them."""
    if isinstance(value, (str, bytes, bytearray, memoryview, os.PathLike, RawImage)):
        return True
    module = type(value).__module__ or ""
    return module.startswith("PIL.") or module == "numpy"


def _part(role: bytes, item: Any, what: str) -> Any:
    if isinstance(item, str):
        return (role, "text", _native.encode(item, what))
    return _image_part(role, item, what)


def _image_part(role: bytes, image: Any, what: str) -> Any:
    """An image as (role, kind, payload): a path, encoded bytes, or a PixelBuffer."""
    if isinstance(image, (str, os.PathLike)):
        return (role, "file", _native.encode(image, what))
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        array = (ctypes.c_uint8 * max(len(data), 1)).from_buffer_copy(data or b"\0")
        return (role, "encoded", (array, len(data)))
    try:
        return (role, "pixels", pixel_buffer(image, what))
    except TypeError:
        raise TypeError(f"{what} must be a path, the bytes of a PNG/JPEG/WebP file, a diffgentor.RawImage, "
                        f"a PIL.Image.Image or a numpy uint8 array, not {type(image).__name__}") from None


def _add(lib: Any, params: int, role: bytes, kind: str, payload: Any) -> None:
    check = _native.check
    if kind == "text":
        check(lib.dg_vlm_params_add_text(params, role, payload))
    elif kind == "file":
        check(lib.dg_vlm_params_add_image_file(params, role, payload))
    elif kind == "encoded":
        array, size = payload
        check(lib.dg_vlm_params_add_image_encoded(params, role, ctypes.cast(array, ctypes.POINTER(ctypes.c_uint8)),
                                                  size))
    else:
        buf = payload
        check(lib.dg_vlm_params_add_image(params, role, buf.pointer, buf.width, buf.height, buf.channels, buf.stride))

