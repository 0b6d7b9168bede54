"""Learning-rate factors for ``LambdaLR``: linear warm-up, then constant (PixArt) or cosine decay."""

from __future__ import annotations

import math
from functools import partial

import torch


def warmup_cosine(warmup_steps: int, total_steps: int | None, step: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to 0 at ``total_steps`` (constant if None)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not total_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def adamw_warmup_cosine(params, lr: float, weight_decay: float, warmup_steps: int, total_steps: int | None) -> dict:
    """Lightning's ``configure_optimizers`` answer: AdamW stepped per batch with ``warmup_cosine``."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, warmup_steps, total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
