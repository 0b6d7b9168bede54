"""Aspect-ratio buckets (PixArt-alpha Sec. 2.5, multi-aspect training of the 1024-MS model).

A table maps a ratio key (``"0.5"``; ratio = height / width, as in PixArt's ``ASPECT_RATIO_1024``)
to ``(height, width)`` with area close to ``base**2`` and both sides multiples of ``multiple``
(the VAE downsampling factor times the patch size, so every bucket tiles into whole tokens).
PixArt's own tables are fixed numbers for 256/512/1024; here they are generated for any base size
so the embedded corpus can use the same mechanism at 128 px.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# The embedded corpus's ratios: portrait 1:2 and 3:4, square, landscape 4:3 and 2:1.
# (PixArt's full 0.25-4.0 tables are a separate, later addition beside this list.)
EMBEDDED_RATIOS: tuple[float, ...] = (0.5, 0.75, 1.0, 1.33, 2.0)


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


def closest_bucket(height: float, width: float, table: Mapping[str, tuple[int, int]]) -> str:
    """Key of the bucket whose ratio is nearest ``height / width`` (PixArt's ``get_closest_ratio``)."""
    if not table:
        raise ValueError("empty aspect-ratio table")
    ratio = height / width
    return min(table, key=lambda key: abs(float(key) - ratio))
