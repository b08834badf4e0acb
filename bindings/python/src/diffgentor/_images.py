"""Image results: :class:`RawImage` (no dependencies), conversions to numpy and Pillow, a PNG writer;
and image inputs (init images and masks) laid out for ``dg_params_set_init_image``/``_mask``."""

from __future__ import annotations

import functools
import json
import os
import struct
import zlib
from typing import TYPE_CHECKING, Any, Dict, List, Literal, Optional, Tuple, TypeVar, Union

if TYPE_CHECKING:  # pragma: no cover
    import numpy
    import PIL.Image


#: What :meth:`Pipeline.generate` returns images as; None picks the best installed (pil > numpy > raw).
#: "png" and "jpeg" are ``bytes`` of the image encoded by the library (``dg_image_encode_*``).
OutputKind = Literal["raw", "numpy", "pil", "png", "jpeg"]
OUTPUT_KINDS = ("raw", "numpy", "pil", "png", "jpeg")
ENCODED_KINDS = ("png", "jpeg")

T = TypeVar("T")


class RawImage:
    """An RGB8 image without dependencies: ``height`` rows of ``width * 3`` bytes, top row first.
    :meth:`save` writes it as PNG."""

    __slots__ = ("width", "height", "data")

    channels = 3

    def __init__(self, width: int, height: int, data: bytes) -> None:
        if len(data) != width * height * 3:
            raise ValueError(f"{width}x{height} RGB needs {width * height * 3} bytes, got {len(data)}")
        self.width: int = width
        self.height: int = height
        self.data: bytes = data

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height), like ``PIL.Image.Image.size``."""
        return (self.width, self.height)

    def __repr__(self) -> str:
        return f"RawImage(width={self.width}, height={self.height}, data=<{len(self.data)} bytes>)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawImage):
            return NotImplemented
        return (self.width, self.height, self.data) == (other.width, other.height, other.data)

    def __hash__(self) -> int:
        return hash((self.width, self.height, self.data))

    def to_numpy(self) -> "numpy.ndarray":
        """A writable uint8 array of shape (height, width, 3). Needs numpy."""
        import numpy as np

        return np.frombuffer(self.data, dtype=np.uint8).reshape(self.height, self.width, 3).copy()

    def to_pil(self) -> "PIL.Image.Image":
        """A ``PIL.Image.Image`` in mode "RGB". Needs Pillow."""
        from PIL import Image

        return Image.frombytes("RGB", (self.width, self.height), self.data)

    def to_png(self) -> bytes:
        """The image encoded as PNG (no dependencies: zlib from the standard library)."""
        return encode_png(self.width, self.height, self.data)

    def save_png(self, path: "Union[str, os.PathLike[str]]") -> None:
        """Writes the image as a PNG file at ``path``."""
        with open(path, "wb") as f:
            f.write(self.to_png())

    def save(self, path: "Union[str, os.PathLike[str]]", format: Optional[str] = None) -> None:
        """Writes a PNG file, like ``PIL.Image.Image.save`` but without Pillow: ``path`` must end in
        ".png" unless ``format`` is "PNG". Other formats raise ValueError (see :meth:`to_pil`)."""
        if format is not None:
            is_png = format.lower() == "png"
        else:
            is_png = os.path.splitext(os.fspath(path))[1].lower() == ".png"
        if not is_png:
            wanted = format if format is not None else repr(os.fspath(path))
            raise ValueError(f"RawImage.save writes PNG only, not {wanted}; use .to_pil().save() for other formats")
        self.save_png(path)


class ImageList(List[T]):
    """The images of one request (a plain list), with the request's ``seed``: the one given, or
    the one the library drew when none was (0 from a remote service, which takes no seed); and
    ``metadata``: what the generator reported besides the images (``dg_images_metadata``, parsed):
    a remote service's ``"model"``, ``"revised_prompts"`` and the fields it ``"ignored"`` under
    best effort; ``{}`` from a local pipeline."""

    def __init__(self, images: List[T], seed: int, metadata: Optional[Dict[str, Any]] = None,
                 paths: Optional[List[str]] = None) -> None:
        super().__init__(images)
        self.seed: int = seed
        self.metadata: Dict[str, Any] = {} if metadata is None else metadata
        #: The files ``generate(save=...)`` wrote, one per image in order; [] without ``save``.
        self.paths: List[str] = [] if paths is None else paths

    def __repr__(self) -> str:
        shown = f", metadata={self.metadata!r}" if self.metadata else ""
        return f"ImageList({list.__repr__(self)}, seed={self.seed}{shown})"


def parse_metadata(text: bytes) -> Dict[str, Any]:
    """``dg_images_metadata``'s JSON object as a dict. Lenient, like the Go binding: the images are
    what the caller asked for, so text that is not a JSON object (which the library never sends)
    gives ``{}`` instead of losing them."""
    try:
        value = json.loads(text.decode("utf-8")) if text else {}
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return {}
    return value if isinstance(value, dict) else {}


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """PNG of an RGB8 image (8-bit truecolour, no filtering, zlib level 6)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    stride = width * 3
    rows = b"".join(b"\0" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 6))
        + chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=None)
def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def resolve_output(output: Optional[str]) -> str:
    """The output kind to use: ``output`` checked (its package must be importable), or the best
    installed one when None."""
    if output is None:
        if _has("PIL.Image"):
            return "pil"
        if _has("numpy"):
            return "numpy"
        return "raw"
    if output in ENCODED_KINDS:
        return output
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_KINDS))} or None, not {output!r}")
    if output == "pil" and not _has("PIL.Image"):
        raise ImportError("output='pil' needs Pillow: pip install pillow (or output='raw')")
    if output == "numpy" and not _has("numpy"):
        raise ImportError("output='numpy' needs numpy: pip install numpy (or output='raw')")
    return output


def convert(width: int, height: int, channels: int, stride: int, pixels: Any, kind: str) -> Any:
    """One image copied from ``pixels`` (a ctypes pointer to ``height`` rows of ``stride`` bytes)."""
    import ctypes

    if channels != 3:  # dg_image_channels: 3 (RGB8) in ABI 0; anything else is a library this binding predates
        from ._errors import ErrorCode, UnsupportedError

        raise UnsupportedError(f"the library returned a {channels}-channel image; this binding reads RGB8 (3)",
                               ErrorCode.UNSUPPORTED)
    row = width * 3
    if stride == row:
        if kind == "numpy":
            import numpy as np

            arr = np.empty((height, width, 3), dtype=np.uint8)
            ctypes.memmove(arr.ctypes.data, pixels, row * height)
            return arr
        data = ctypes.string_at(pixels, row * height)
    else:  # padded rows (the library does not pad today, but the ABI reports a stride)
        base = ctypes.cast(pixels, ctypes.c_void_p).value or 0
        data = b"".join(ctypes.string_at(base + y * stride, row) for y in range(height))
    if kind == "numpy":
        import numpy as np

        return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3).copy()
    if kind == "pil":
        from PIL import Image

        return Image.frombytes("RGB", (width, height), data)
    return RawImage(width, height, data)


#: What ``generate(image=..., mask=...)`` takes: a :class:`RawImage` (RGB), a ``PIL.Image.Image``
#: (modes "L", "RGB" and "RGBA" as they are, others converted), or a numpy ``uint8`` array of shape
#: (H, W) (grey), (H, W, 1), (H, W, 3) (RGB) or (H, W, 4) (RGBA; alpha ignored), rows may be padded.
ImageInput = Union[RawImage, "numpy.ndarray", "PIL.Image.Image"]


class PixelBuffer:
    """A caller's image as ``dg_params_set_init_image`` takes it: a pointer to ``height`` rows of
    ``stride`` bytes, ``width * channels`` of them pixels. Keeps the memory it points into alive."""

    __slots__ = ("pointer", "width", "height", "channels", "stride", "_keep")

    def __init__(self, keep: Any, pointer: Any, width: int, height: int, channels: int, stride: int) -> None:
        self._keep = keep
        self.pointer = pointer
        self.width = width
        self.height = height
        self.channels = channels
        self.stride = stride


def _from_bytes(data: bytes, width: int, height: int, channels: int) -> PixelBuffer:
    import ctypes

    array = (ctypes.c_uint8 * max(len(data), 1)).from_buffer_copy(data or b"\0")
    pointer = ctypes.cast(array, ctypes.POINTER(ctypes.c_uint8))
    return PixelBuffer(array, pointer, width, height, channels, width * channels)


def pixel_buffer(value: Any, what: str) -> PixelBuffer:
    """``value`` (an :data:`ImageInput`) as a :class:`PixelBuffer`; TypeError for anything else.
    Sizes and channel counts are checked by the library (``InvalidArgError``), except that the
    buffer always holds every byte the C call may read."""
    import ctypes

    if isinstance(value, RawImage):
        return _from_bytes(value.data, value.width, value.height, 3)
    module = type(value).__module__ or ""
    if module.startswith("PIL.") and hasattr(value, "tobytes") and hasattr(value, "mode"):
        image = value
        if image.mode not in ("L", "RGB", "RGBA"):
            image = image.convert("L" if image.mode in ("1", "LA", "I", "I;16", "F") else "RGB")
        channels = {"L": 1, "RGB": 3, "RGBA": 4}[image.mode]
        width, height = image.size
        return _from_bytes(image.tobytes(), width, height, channels)
    if module == "numpy" and hasattr(value, "__array_interface__"):
        import numpy as np

        arr = value
        if arr.dtype != np.uint8:
            raise TypeError(f"{what} must be a uint8 array, not {arr.dtype}")
        if arr.ndim not in (2, 3):
            raise TypeError(f"{what} must be an array of shape (H, W) or (H, W, C), not {arr.shape}")
        channels = 1 if arr.ndim == 2 else int(arr.shape[2])
        height, width = int(arr.shape[0]), int(arr.shape[1])
        pixel_ok = arr.strides[1] == channels and (arr.ndim == 2 or arr.strides[2] == 1)
        if not (pixel_ok and arr.strides[0] >= width * channels) or arr.size == 0:
            arr = np.ascontiguousarray(arr)
            if arr.size == 0:
                arr = np.zeros(1, dtype=np.uint8)  # a valid pointer; the library refuses a 0 side first
        stride = int(arr.strides[0]) if arr.ndim >= 2 else 0
        return PixelBuffer(arr, arr.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), width, height, channels, stride)
    raise TypeError(f"{what} must be a diffgentor.RawImage, a PIL.Image.Image or a numpy uint8 array, "
                    f"not {type(value).__name__}")
