"""Image grids written as PNG (atomically) and sent to every logger that takes images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.loggers import Logger
from torchvision.utils import make_grid, save_image

from pixart_lab.utils.io import atomic_save


def save_grid(images: torch.Tensor, path: str | Path, nrow: int, loggers: Sequence[Logger] = (), key: str = "") -> Path:
    """Save ``images`` (float [-1, 1], N x 3 x H x W) as one PNG grid; log it where a logger can."""
    grid = make_grid(images.detach().float().clamp(-1, 1).add(1).div(2).cpu(), nrow=nrow, padding=2, pad_value=1.0)
    atomic_save(path, lambda tmp: save_image(grid, tmp, format="png"))
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key or Path(path).stem, images=[grid])
    return Path(path)
