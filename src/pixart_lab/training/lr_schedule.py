"""Learning-rate factors for ``LambdaLR``: linear warm-up, then constant (PixArt) or cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(warmup_steps: int, total_steps: int | None, step: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at ``total_steps`` (constant if None)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not total_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))
