"""Decoding user images safely: every failure becomes a named ``BadImageError`` reason."""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Decompression bombs are refused by size, not by a PIL warning that is easy to miss.
MAX_PIXELS = 89_478_485  # PIL's own default threshold, made explicit
MIN_SIDE = 8


class BadImageError(ValueError):
    """An image that cannot be used; ``reason`` is the short, countable cause."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_rgb(path: str | Path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Open ``path`` as an RGB image with EXIF orientation applied, or raise ``BadImageError``.

    Converts palette/transparency (composited on white), CMYK, greyscale and 16-bit modes to RGB.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(path, "missing file")
    if path.stat().st_size == 0:
        raise BadImageError(path, "zero-byte file")
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > max_pixels:
                    raise BadImageError(path, f"too large ({im.width}x{im.height} > {max_pixels} pixels)")
                if min(im.width, im.height) < min_side:
                    raise BadImageError(path, f"too small ({im.width}x{im.height} < {min_side} px side)")
                im.load()
                im = ImageOps.exif_transpose(im)
                return _to_rgb(im)
    except BadImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(path, f"unreadable image ({type(e).__name__})") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImageError(path, f"corrupt image ({e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bit instead of clipping at 255.
        im = im.point(lambda v: v / 256).convert("L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", im.size, (255, 255, 255))
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return background
    return im.convert("RGB")
