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


def save_labelled_rows(
    rows: Sequence[tuple[str, torch.Tensor]], path: str | Path, scale: int = 2, label_width: int = 150,
    loggers: Sequence[Logger] = (), key: str = "",
) -> Path:
    """One PNG of labelled rows: each row a label on the left, then its uint8 images [N, 3, H, W] upscaled by ``scale``."""
    from PIL import Image, ImageDraw

    height, width = (int(s) * scale for s in rows[0][1].shape[-2:])
    columns = max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (width + 2), len(rows) * (height + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = r * (height + 2)
        draw.multiline_text((4, top + 4), label, fill=(0, 0, 0))
        for c, image in enumerate(images):
            tile = Image.fromarray(image.permute(1, 2, 0).cpu().numpy()).resize((width, height), Image.NEAREST)
            canvas.paste(tile, (label_width + c * (width + 2), top))
    atomic_save(path, lambda tmp: canvas.save(tmp, format="PNG"))
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key or Path(path).stem, images=[canvas])
    return Path(path)
