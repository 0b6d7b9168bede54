"""A corpus of bad inputs through the real entry point: each one converted correctly or skipped with
its reason counted in features/report.json; the run completes and caches exactly the usable ones."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixart_lab.data.features import read_shard
from pixart_lab.data.images import ImageLimits, load_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
LONG_CAPTION = " ".join(["a large red circle left of a small blue square"] * 20)  # ~200 tokens
CAPTION = "a large red circle on a white background"

# name -> what the data report must say about it (skip reason, or conversion of a kept image)
SKIPPED = {
    "truncated.jpg": "corrupt image (image file is truncated",
    "zero.png": "zero-byte image file",
    "one_pixel.png": "too small (1x1 < 8 px side)",
    "bomb.png": "too large (20000x20000 > 64000000 pixels)",
    "not_an_image.png": "unreadable image header (UnidentifiedImageError)",
    "latin1_caption.png": "caption is not valid UTF-8 (byte 3)",
    "empty_caption.png": "empty caption",
    "no_caption.png": "missing caption file",
}
CONVERTED = {
    "cmyk.jpg": "CMYK converted to RGB",
    "grey16.png": "16-bit greyscale scaled to 8 bit",
    "palette_transparent.png": "transparency composited on (255, 255, 255)",
    "exif_rotated.jpg": "EXIF orientation 6 applied",
    "long_caption.png": "dense caption truncated to 120 tokens",
}
KEPT_AS_IS = ["good.png", "rgb16.png"]


def png_rgb16(path: Path, rgb: tuple[int, int, int], size: int = 16) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), every pixel ``rgb`` in 0..65535."""
    row = b"\x00" + np.tile(np.array(rgb, dtype=">u2"), size).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * size)) + chunk(b"IEND", b""))


def halves(size: tuple[int, int], left, right, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, size, right)
    image.paste(left, (0, 0, size[0] // 2, size[1]))
    return image


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_corpus")
    train, heldout = root / "train", root / "heldout"
    train.mkdir(), heldout.mkdir()
    for folder in (train, heldout):
        halves((32, 32), RED, BLUE).save(folder / "good.png")
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    (train / "truncated.jpg").write_bytes(jpeg.getvalue()[:-2000])  # an interrupted download: header whole, scan cut
    (train / "zero.png").write_bytes(b"")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(train / "cmyk.jpg", quality=95)  # red in CMYK
    Image.new("I;16", (16, 16), 32768).save(train / "grey16.png")
    png_rgb16(train / "rgb16.png", (65535, 32768, 257))
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 255, 0] + list(RED) + [0] * 762)
    palette.paste(0, (0, 0, 8, 16))  # left half: index 0, transparent (its green must not show)
    palette.save(train / "palette_transparent.png", transparency=0)
    Image.new("RGB", (1, 1), RED).save(train / "one_pixel.png")
    Image.MAX_IMAGE_PIXELS, limit = None, Image.MAX_IMAGE_PIXELS
    Image.new("1", (20000, 20000)).save(train / "bomb.png")  # 49 kB on disk, 400 megapixels decoded
    Image.MAX_IMAGE_PIXELS = limit
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 32 wide x 16 high; shown rotated 90 degrees clockwise
    halves((32, 16), RED, BLUE).save(train / "exif_rotated.jpg", exif=exif, quality=95)
    (train / "not_an_image.png").write_bytes(b"this is not an image")
    for name in ("latin1_caption.png", "empty_caption.png", "no_caption.png", "long_caption.png"):
        halves((32, 32), RED, BLUE).save(train / name)
    for image in train.iterdir():
        (image.with_suffix(".txt")).write_text(CAPTION)
    (heldout / "good.txt").write_text(CAPTION)
    (train / "latin1_caption.txt").write_bytes("caf\xe9 with a red circle".encode("latin-1"))
    (train / "empty_caption.txt").write_text("  \n\t")
    (train / "no_caption.txt").unlink()
    (train / "long_caption.txt").write_text(LONG_CAPTION)
    return root


def test_every_bad_input_is_converted_or_skipped_with_its_reason_and_the_run_completes(bad_corpus, saved_tiny_models, tmp_path):
    out = tmp_path / "features"
    cmd = [
        sys.executable, "-m", "pixart_lab.cli.extract_features", "data=folder", f"data.root={bad_corpus}", "data.image_size=64",
        f"features.out_dir={out}", f"vae.pretrained={saved_tiny_models}/vae", f"text_encoder.pretrained={saved_tiny_models}/text_encoder",
        f"outputs.metrics={tmp_path}/features.json", f"hydra.run.dir={tmp_path}/hydra",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads((out / "report.json").read_text())
    skipped = {key: reason for reason, keys in report["examples"].items() for key in keys}
    assert {key: skipped.get(key, "")[: len(reason)] for key, reason in SKIPPED.items()} == SKIPPED
    converted = {key: what for what, keys in report["conversion_examples"].items() for key in keys}
    assert {key: converted.get(key) for key in CONVERTED} == CONVERTED
    assert report["skipped"] == len(SKIPPED) and sum(report["converted"].values()) == len(CONVERTED)

    index = json.loads((out / "train" / "index.json").read_text())
    cached = [key for shard in index["shards"] for key in read_shard(out / "train" / shard["file"], shard["sha256"])[1]]
    assert sorted(cached) == sorted([*CONVERTED, *KEPT_AS_IS]) and report["kept"] == len(cached) + 1  # + held-out
    metrics = json.loads((tmp_path / "features.json").read_text())
    assert (metrics["images"], metrics["skipped"], metrics["converted"]) == (len(cached) + 1, len(SKIPPED), len(CONVERTED))
    assert f"features: {len(cached) + 1} images cached, {len(SKIPPED)} skipped, {len(CONVERTED)} conversions" in done.stdout


@pytest.mark.parametrize(
    "name, size, pixels",
    [("cmyk.jpg", (16, 16), {(8, 8): RED}),
     ("grey16.png", (16, 16), {(8, 8): (128, 128, 128)}),
     ("rgb16.png", (16, 16), {(8, 8): (255, 128, 1)}),  # 16 bits per channel: the high byte of each
     ("palette_transparent.png", (16, 16), {(2, 8): WHITE, (13, 8): RED}),
     ("exif_rotated.jpg", (16, 32), {(8, 3): RED, (8, 28): BLUE})],  # upright: portrait, the red half on top
)  # fmt: skip
def test_conversions_give_the_right_pixels(bad_corpus, name, size, pixels):
    image = load_rgb(bad_corpus / "train" / name)
    assert image.mode == "RGB" and image.size == size
    for xy, expected in pixels.items():
        assert all(abs(a - b) <= 4 for a, b in zip(image.getpixel(xy), expected)), (xy, image.getpixel(xy), expected)


def test_transparency_goes_on_the_configured_background(bad_corpus):
    image = load_rgb(bad_corpus / "train" / "palette_transparent.png", ImageLimits(background=(0, 0, 0)))
    assert image.getpixel((2, 8)) == (0, 0, 0) and image.getpixel((13, 8)) == RED

