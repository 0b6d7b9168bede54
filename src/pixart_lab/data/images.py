"""Decoding user images safely: every failure becomes a named ``BadImageError`` reason, every
conversion (CMYK, 16 bit, transparency, EXIF rotation) a named note.

Decompression bombs are refused by the size in their header, before any pixel is decoded, against
``ImageLimits.max_pixels`` (conf/extract_features.yaml ``images``) rather than PIL's own threshold,
which only warns below twice its value.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pixart_lab.data.records import ImageMember

ImageSource = str | Path | ImageMember


@dataclass(frozen=True)
class ImageLimits:
    """What decoding accepts: at most ``max_pixels`` pixels, at least ``min_side`` a side;
    transparent pixels are composited on ``background`` (RGB)."""

    max_pixels: int = 64_000_000  # 8000 x 8000: above any camera in common use
    min_side: int = 8
    background: tuple[int, int, int] = (255, 255, 255)


class BadImageError(ValueError):
    """An image that cannot be used; ``reason`` is the short, countable cause."""

    def __init__(self, path: ImageSource, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _image_file(path: ImageSource, data: bytes | None) -> Path | io.BytesIO:
    """What PIL opens: the file at ``path``, or the bytes of ``path`` when it is a shard member
    (``data``: those bytes, already read)."""
    if data is None and not isinstance(path, (str, Path)):
        try:
            data = path.read_bytes()
        except OSError as e:
            raise BadImageError(path, f"unreadable shard member ({e})") from e
    if data is not None:
        if not data:
            raise BadImageError(path, "zero-byte image file")
        return io.BytesIO(data)
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "missing image file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "zero-byte image file")
    return path


@contextmanager
def open_image(path: ImageSource, limits: ImageLimits = ImageLimits(), data: bytes | None = None) -> Iterator[Image.Image]:
    """Open ``path`` (header only) or raise ``BadImageError``: missing, empty, not an image, too large, too small.

    ``path`` is a file or a shard member; ``data``, when given, is its content already read."""
    file = _image_file(path, data)
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the explicit check below replaces PIL's
    try:
        image = Image.open(file)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImageError(path, f"unreadable image header ({type(e).__name__})") from e
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise BadImageError(path, f"too large ({width}x{height} > {limits.max_pixels} pixels)")
        if min(width, height) < limits.min_side:
            raise BadImageError(path, f"too small ({width}x{height} < {limits.min_side} px side)")
        yield image


def load_rgb(
    path: ImageSource, limits: ImageLimits = ImageLimits(), note: Callable[[str], None] | None = None
) -> Image.Image:
    """Decode ``path`` as an 8-bit RGB image, EXIF orientation applied, or raise ``BadImageError``.

    Palette/alpha transparency is composited on ``limits.background``; CMYK, greyscale and 16-bit
    modes are converted to RGB. ``note`` receives a short description of each conversion made.
    """
    note = note or (lambda _: None)
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with open_image(path, limits) as image:
        try:
            image.load()
            orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = as stored
            upright = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImageError(path, f"corrupt image ({e})") from e
    if orientation != 1:
        note(f"EXIF orientation {orientation} applied")
    return to_rgb(upright, limits.background, note)


def to_rgb(image: Image.Image, background: tuple[int, int, int], note: Callable[[str], None]) -> Image.Image:
    """``image`` as 8-bit RGB (see :func:`load_rgb`)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bit instead of clipping at 255.
        image = image.point(lambda v: v / 256).convert("L")
        note("16-bit greyscale scaled to 8 bit")
    elif image.mode == "CMYK":
        note("CMYK converted to RGB")
    if "transparency" in image.info and image.mode in ("P", "L", "RGB"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, tuple(background))
        alpha = rgba.getchannel("A")
        flattened.paste(rgba, mask=alpha)
        if alpha.getextrema()[0] < 255:
            note(f"transparency composited on {tuple(background)}")
        return flattened
    return image.convert("RGB")
