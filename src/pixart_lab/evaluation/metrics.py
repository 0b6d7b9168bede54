"""FID and CLIP score through torchmetrics (embedded default) or clean-fid (real Inception), and the
image degradations and renderings the metrics are validated with.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.multimodal.clip_score import CLIPScore
from torchvision.transforms.functional import gaussian_blur

from pixart_lab.data.scene import Scene
from pixart_lab.data.render import render_scene
from pixart_lab.data.transforms import to_uint8_chw
from pixart_lab.evaluation.clip_model import EvaluatorMissingError
from pixart_lab.utils.hub import hub_offline, missing_weights_error


class FidReference:
    """torchmetrics FID of uint8 image sets against one real set, whose features are computed once.

    ``reset_real_features=False`` keeps the real statistics across ``reset()``, so every call costs
    only the generated set's features.
    """

    def __init__(self, real: torch.Tensor, extractor: nn.Module, batch_size: int = 250):
        self.metric = FrechetInceptionDistance(feature=extractor, normalize=False, reset_real_features=False)
        self.batch_size = batch_size
        self._update(real, is_real=True)

    def _update(self, images: torch.Tensor, is_real: bool) -> None:
        for i in range(0, len(images), self.batch_size):
            self.metric.update(images[i : i + self.batch_size], real=is_real)

    def __call__(self, fake: torch.Tensor) -> float:
        self.metric.reset()
        self._update(fake, is_real=False)
        return float(self.metric.compute())


class CleanFidReference:
    """clean-fid's FID (Inception, mode "clean") of image sets against one real set kept on disk."""

    def __init__(self, real: torch.Tensor, inception_dir: str | os.PathLike | None = None):
        self._tmp = tempfile.TemporaryDirectory(prefix="clean_fid_")
        self.real_dir = save_images(real, Path(self._tmp.name) / "real")
        self.inception_dir = inception_dir

    def __call__(self, fake: torch.Tensor) -> float:
        with tempfile.TemporaryDirectory(dir=self._tmp.name) as tmp:
            return clean_fid(self.real_dir, save_images(fake, Path(tmp) / "fake"), self.inception_dir)


def frechet_distance(real: torch.Tensor, fake: torch.Tensor, extractor: nn.Module, batch_size: int = 250) -> float:
    """torchmetrics FID between two uint8 image sets in the feature space of ``extractor``."""
    return FidReference(real, extractor, batch_size)(fake)


def clip_score(
    images: torch.Tensor, texts: Sequence[str], model: Callable[[], tuple], batch_size: int = 250
) -> float:
    """torchmetrics CLIPScore (100 x mean clipped cosine) of uint8 images against their texts."""
    if len(images) != len(texts):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    metric = CLIPScore(model_name_or_path=model)
    for i in range(0, len(images), batch_size):
        metric.update(list(images[i : i + batch_size]), list(texts[i : i + batch_size]))
    return float(metric.compute())


def clean_fid(
    real_dir: str | os.PathLike,
    fake_dir: str | os.PathLike,
    inception_dir: str | os.PathLike | None = None,
    feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
    device: str = "cpu",
) -> float:
    """clean-fid's ``compute_fid`` (mode "clean") between two image folders.

    Inception weights are read from ``inception_dir/inception-2015-12-05.pt`` (clean-fid downloads
    them there when online); ``feature_extractor`` replaces Inception (e.g. for a test).
    """
    from cleanfid import fid as cleanfid

    if feature_extractor is None:
        feature_extractor = _inception(inception_dir, device)
    return float(
        cleanfid.compute_fid(
            str(real_dir), str(fake_dir), mode="clean", custom_feat_extractor=feature_extractor,
            batch_size=batch_size, device=torch.device(device), num_workers=0, verbose=False,
        )  # fmt: skip
    )


def _inception(inception_dir: str | os.PathLike | None, device: str) -> Callable[[torch.Tensor], torch.Tensor]:
    from cleanfid.downloads_helper import inception_url
    from cleanfid.inception_torchscript import InceptionV3W

    folder = Path(inception_dir or "/tmp")
    weights = folder / "inception-2015-12-05.pt"
    fix = f"Download {inception_url} into {folder} (eval.fid.inception_dir), or run once with network access."
    if not weights.is_file() and hub_offline():
        raise missing_weights_error("clean-fid Inception", weights, fix, error=EvaluatorMissingError)
    try:
        model = InceptionV3W(str(folder), download=True).to(device).eval()
    except OSError as e:  # URLError is an OSError: no network, no weights
        raise missing_weights_error("clean-fid Inception", weights, fix, reason=f"{inception_url} is unreachable ({e})", error=EvaluatorMissingError) from e
    return lambda x: model(x)


def save_images(images: torch.Tensor, folder: str | os.PathLike) -> Path:
    """Write uint8 images as numbered PNGs into ``folder`` (for folder-based tools such as clean-fid)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:06d}.png")
    return folder


def blurred(images: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian-blurred copy of uint8 images (a degradation FID must notice)."""
    kernel = 2 * int(3 * sigma) + 1
    return gaussian_blur(images.float(), [kernel, kernel], [sigma, sigma]).round().clamp(0, 255).to(torch.uint8)


def colour_shuffled(images: torch.Tensor) -> torch.Tensor:
    """RGB -> BRG copy of uint8 images: layout and sharpness intact, every colour wrong."""
    return images[:, [2, 0, 1]]


def render_scenes(scenes: Sequence[dict], seed: int = 0) -> torch.Tensor:
    """The corpus renderer's images of scene-graph dicts, uint8 [N, 3, H, W]."""
    rng = np.random.default_rng(seed)
    return torch.stack([to_uint8_chw(render_scene(Scene.from_dict(s), rng)) for s in scenes])
