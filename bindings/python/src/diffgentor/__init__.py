"""diffgentor: Stable Diffusion on ONNX Runtime, through libdiffgentor's C API (ctypes).

    import diffgentor

    with diffgentor.Runtime() as rt, rt.load("models/tiny-sd") as pipe:
        images = pipe.generate("a red fox", seed=42, steps=3, scheduler="euler", output="raw")
        images[0].save("fox.png")  # a RawImage: writes a PNG without Pillow

    # A hosted service instead: same generate(); options also from DG_OPENAI_* variables.
    with diffgentor.Remote("openai", model="gpt-image-1") as remote:
        images = remote.generate("a red fox", output="raw")
        print(images.metadata)  # {"model": ..., "revised_prompts": [...], ...}

    # A vision-language model: captions, answers about images, prompt enhancement.
    with diffgentor.Runtime() as rt, diffgentor.Vlm(rt, "models/tiny-qwen2.5-vl") as vlm:
        answer = vlm.generate("What is in the picture?", images=["photo.png"], max_new_tokens=32)
        print(answer.text, answer.token_ids)

The C library is found through DG_LIBRARY_PATH, a copy bundled in ``diffgentor/lib/``, then the
system loader; ONNX Runtime through ``Runtime(ort_library=...)``, DG_ORT_DYLIB_PATH, or the
installed ``onnxruntime`` package (the platform wheel depends on it). See README.md.
"""

from ._errors import (
    BackendError,
    CancelledError,
    EpUnavailableError,
    Error,
    ErrorCode,
    InvalidArgError,
    IoError,
    LibraryNotFoundError,
    ModelError,
    NullArgError,
    PanicError,
    RateLimitedError,
    RefusedError,
    RemoteError,
    RemoteTimeoutError,
    UnsupportedError,
)
from ._images import ImageInput, ImageList, OutputKind, RawImage
from ._lora import LoraSpec, LoraStack
from ._remote import Remote
from ._runtime import (
    BasePipeline,
    CancelToken,
    Pipeline,
    Plan,
    Progress,
    ProgressCallback,
    Runtime,
    library_path,
    library_version,
)
from ._vlm import Message, TokenCallback, Vlm, VlmImage, VlmResult, VlmTimings, VlmToken

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BasePipeline",
    "CancelToken",
    "CancelledError",
    "EpUnavailableError",
    "Error",
    "ErrorCode",
    "ImageInput",
    "ImageList",
    "InvalidArgError",
    "IoError",
    "LibraryNotFoundError",
    "LoraSpec",
    "LoraStack",
    "Message",
    "ModelError",
    "NullArgError",
    "OutputKind",
    "PanicError",
    "Pipeline",
    "Plan",
    "Progress",
    "ProgressCallback",
    "RateLimitedError",
    "RawImage",
    "RefusedError",
    "Remote",
    "RemoteError",
    "RemoteTimeoutError",
    "Runtime",
    "TokenCallback",
    "UnsupportedError",
    "Vlm",
    "VlmImage",
    "VlmResult",
    "VlmTimings",
    "VlmToken",
    "library_path",
    "library_version",
]
