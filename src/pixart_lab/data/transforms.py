"""Image -> tensor preprocessing shared by VAE training and feature extraction (PixArt: resize, centre crop)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from pixart_lab.data.images import BadImageError, ImageLimits, load_rgb
from pixart_lab.data.records import Record, SkipReport


def resize_center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    """Scale so the image covers ``height x width``, then crop the centre (aspect ratio kept)."""
    if image.size == (width, height):
        return image
    scale = max(height / image.height, width / image.width)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def to_uint8_chw(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def uint8_to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the range the VAE sees."""
    return images.float().div(127.5).sub(1.0)


def model_range_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] (decoded images) -> uint8 [0, 255], rounded and clipped."""
    return images.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def load_images(
    records: Sequence[Record],
    height: int,
    width: int,
    report: SkipReport | None = None,
    progress: bool = True,
    limits: ImageLimits = ImageLimits(),
) -> tuple[torch.Tensor, list[Record]]:
    """Decode ``records`` to one uint8 tensor [N, 3, height, width]; bad images are skipped and counted,
    conversions counted."""
    report = report if report is not None else SkipReport(source="load_images")
    tensors, kept = [], []
    for record in tqdm(records, desc=f"decode {height}x{width}", disable=not progress, mininterval=2):
        try:
            image = load_rgb(record.image_path, limits, note=lambda what, key=record.key: report.convert(key, what))
        except BadImageError as e:
            report.skip(record.key, e.reason)
            continue
        tensors.append(to_uint8_chw(resize_center_crop(image, height, width)))
        kept.append(record)
    if not tensors:
        raise ValueError(f"no usable images among {len(records)} records ({report.as_dict()['by_reason']})")
    return torch.stack(tensors), kept
