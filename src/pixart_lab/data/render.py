"""Render a scene graph to pixels: anti-aliased shapes, then the scene's quality degradation.

Shapes are drawn at ``supersample`` x resolution and box-averaged down, which is exact
area-coverage anti-aliasing for an integer factor (and the cheapest good filter: ``Image.reduce``).
Degradations make the aesthetic score visible in the pixels, as the stage-3 subset selection in
the paper relies on: "noisy" adds Gaussian pixel noise after a slight blur; "compressed" blurs,
re-encodes as low-quality JPEG in memory, and adds a little noise.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pixart_lab.data.scene import BACKGROUNDS, COLOURS, Scene, SceneObject

NOISY_SIGMA = (10.0, 18.0)
NOISY_BLUR = 0.5
COMPRESSED_BLUR = (0.6, 1.0)
COMPRESSED_JPEG_QUALITY = (15, 30)
COMPRESSED_SIGMA = 3.0

_STAR_INNER = 0.42  # inner/outer radius of the five-pointed star


def _regular_polygon(
    cx: float, cy: float, radius: float, n: int, phase: float
) -> list[tuple[float, float]]:
    angles = [phase + 2 * math.pi * k / n for k in range(n)]
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles]


def _draw_object(draw: ImageDraw.ImageDraw, obj: SceneObject, scale: int) -> None:
    x0, y0, x1, y1 = (v * scale for v in obj.bbox)
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    fill = COLOURS[obj.colour]
    up = -math.pi / 2
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        # A square of the bbox side looks much heavier than the circle; 0.85 evens the areas out.
        h = 0.85 * r
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif obj.shape == "star":
        outer = _regular_polygon(cx, cy, r, 5, up)
        inner = _regular_polygon(cx, cy, _STAR_INNER * r, 5, up + math.pi / 5)
        draw.polygon([p for pair in zip(outer, inner) for p in pair], fill=fill)
    elif obj.shape == "hexagon":
        draw.polygon(_regular_polygon(cx, cy, r, 6, 0.0), fill=fill)
    elif obj.shape == "diamond":
        # Narrower than tall, so it is not just a rotated square.
        w = 0.7 * r
        draw.polygon([(cx, y0), (cx + w, cy), (cx, y1), (cx - w, cy)], fill=fill)
    else:
        raise ValueError(f"cannot render shape {obj.shape!r}")


def _add_noise(img: Image.Image, rng: np.random.Generator, sigma: float) -> Image.Image:
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + sigma * rng.standard_normal(arr.shape, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")


def degrade(img: Image.Image, quality: str, rng: np.random.Generator) -> Image.Image:
    """Apply the rendering-quality degradation named by ``quality`` ("clean" returns ``img``)."""
    if quality == "clean":
        return img
    if quality == "noisy":
        img = img.filter(ImageFilter.GaussianBlur(NOISY_BLUR))
        return _add_noise(img, rng, float(rng.uniform(*NOISY_SIGMA)))
    if quality == "compressed":
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(*COMPRESSED_BLUR))))
        buf = io.BytesIO()
        low, high = COMPRESSED_JPEG_QUALITY
        img.save(buf, format="JPEG", quality=int(rng.integers(low, high + 1)))
        buf.seek(0)
        with Image.open(buf) as jpeg:
            img = jpeg.convert("RGB")
        return _add_noise(img, rng, COMPRESSED_SIGMA)
    raise ValueError(f"unknown quality {quality!r}")


def render_scene(scene: Scene, rng: np.random.Generator, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` as an RGB image of exactly ``scene.width`` x ``scene.height`` pixels."""
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    size = (scene.width * supersample, scene.height * supersample)
    img = Image.new("RGB", size, BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_object(draw, obj, supersample)
    if supersample > 1:
        img = img.reduce(supersample)
    return degrade(img, scene.quality, rng)
