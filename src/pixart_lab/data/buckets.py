"""Aspect-ratio buckets (PixArt-alpha Sec. 2.5, multi-aspect training of the 1024-MS model).

A table maps a ratio key (``"0.5"``; ratio = height / width, as in PixArt's ``ASPECT_RATIO_1024``)
to ``(height, width)`` with area close to ``base**2`` and both sides multiples of ``multiple``
(the VAE downsampling factor times the patch size, so every bucket tiles into whole tokens).
PixArt's own tables (:func:`pixart_aspect_ratio_table`) are fixed shapes for 256 / 512 / 1024 px;
:func:`aspect_ratio_table` generates tables for any base size, so the embedded corpus uses the same
mechanism at 128 px.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# The embedded corpus's ratios: portrait 1:2 and 3:4, square, landscape 4:3 and 2:1.
EMBEDDED_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.33, 2.0)

# PixArt-alpha's 40 training buckets at 1024 px (ASPECT_RATIO_1024 of diffusion/data/datasets/utils.py),
# (height, width), sides multiples of 64, ratios 0.25 to 4; its 512 and 256 px tables are these shapes
# halved and quartered. diffusers ships 33 of the 40 (ASPECT_RATIO_*_BIN, for inference-time binning:
# it drops 0.26, 0.27, 2.89, 3.11, 3.62, 3.75, 3.88), so the training tables are kept here.
PIXART_1024_SHAPES: tuple[tuple[int, int], ...] = (
    (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664), (640, 1600),
    (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152),
    (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896),
    (1152, 896), (1152, 832), (1216, 832), (1280, 768), (1344, 768), (1408, 704), (1472, 704), (1536, 640),
    (1600, 640), (1664, 576), (1728, 576), (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
)  # fmt: skip
PIXART_BASE_SIZES = (256, 512, 1024)


def ratio_key(ratio: float) -> str:
    """The table key of a ratio, spelled as PixArt spells it (``"0.5"``, ``"1.0"``, ``"1.33"``)."""
    return str(float(ratio))


def aspect_ratio_table(
    base: int, ratios: Sequence[float] = EMBEDDED_RATIOS, multiple: int = 8
) -> dict[str, tuple[int, int]]:
    """``{ratio_key: (height, width)}`` with ``height * width ~= base**2``, sides ``% multiple == 0``.

    Keys are ordered by ratio. Sides are rounded to the nearest multiple (never below one
    multiple), which keeps the area within a few percent of ``base**2`` for ratios in [1/4, 4]
    when ``base`` is several multiples wide.
    """
    if base <= 0 or multiple <= 0:
        raise ValueError(f"base and multiple must be positive, got base={base}, multiple={multiple}")
    table: dict[str, tuple[int, int]] = {}
    for ratio in sorted(float(r) for r in ratios):
        if ratio <= 0:
            raise ValueError(f"aspect ratio must be positive, got {ratio}")
        height = base * math.sqrt(ratio)
        width = base / math.sqrt(ratio)
        table[ratio_key(ratio)] = (
            max(multiple, round(height / multiple) * multiple),
            max(multiple, round(width / multiple) * multiple),
        )
    return table


def pixart_aspect_ratio_table(base: int) -> dict[str, tuple[int, int]]:
    """PixArt's ``ASPECT_RATIO_256`` / ``_512`` / ``_1024``: ``{ratio_key: (height, width)}``, keyed by
    height / width rounded to two decimals, as PixArt spells its keys."""
    if base not in PIXART_BASE_SIZES:
        raise ValueError(f"PixArt's aspect-ratio tables exist for {PIXART_BASE_SIZES} px, not {base}")
    factor = 1024 // base
    return {ratio_key(round(h / w, 2)): (h // factor, w // factor) for h, w in PIXART_1024_SHAPES}


def bucket_table(base: int, aspect_ratios: Sequence[float] | str, multiple: int = 8) -> dict[str, tuple[int, int]]:
    """``aspect_ratios="pixart"``: PixArt's own table at ``base`` px; a list of ratios: generated tables."""
    if aspect_ratios == "pixart":
        return pixart_aspect_ratio_table(base)
    if isinstance(aspect_ratios, str):
        raise ValueError(f"aspect_ratios={aspect_ratios!r}: expected 'pixart' or a list of ratios")
    return aspect_ratio_table(base, aspect_ratios, multiple)


def closest_bucket(height: float, width: float, table: Mapping[str, tuple[int, int]]) -> str:
    """Key of the bucket whose ratio is nearest ``height / width`` (PixArt's ``get_closest_ratio``)."""
    if not table:
        raise ValueError("empty aspect-ratio table")
    ratio = height / width
    return min(table, key=lambda key: abs(float(key) - ratio))
