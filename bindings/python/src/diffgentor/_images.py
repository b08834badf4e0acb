"""Image results: :class:`RawImage` (no dependencies), conversions to numpy and Pillow, a PNG writer."""

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
OutputKind = Literal["raw", "numpy", "pil"]
OUTPUT_KINDS = ("raw", "numpy", "pil")

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

    def __init__(self, images: List[T], seed: int, metadata: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(images)
        self.seed: int = seed
        self.metadata: Dict[str, Any] = {} if metadata is None else metadata

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
    if output not in OUTPUT_KINDS:
        raise ValueError(f"output must be one of {', '.join(map(repr, OUTPUT_KINDS))} or None, not {output!r}")
    if output == "pil" and not _has("PIL.Image"):
        raise ImportError("output='pil' needs Pillow: pip install pillow (or output='raw')")
    if output == "numpy" and not _has("numpy"):
        raise ImportError("output='numpy' needs numpy: pip install numpy (or output='raw')")
    return output


def convert(width: int, height: int, stride: int, pixels: Any, kind: str) -> Any:
    """One image copied from ``pixels`` (a ctypes pointer to ``height`` rows of ``stride`` bytes)."""
    import ctypes

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
