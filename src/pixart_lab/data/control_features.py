"""The control feature cache: VAE latents of edge maps, in shards beside the image feature cache.

Written with the feature cache's machinery (:func:`pixart_lab.data.features.cache_split`: atomic,
resumable shards and an index per split), keyed by the same record keys, so a training example
joins its image latent, caption and control latent by key. Layout::

    <control_dir>/manifest.json                    detector and its settings, VAE, counts
    <control_dir>/<split>/index.json               shards: file, bucket, size, count
    <control_dir>/<split>/1p0-00000.safetensors    control_mean (VAE posterior mean of the control
                                                   image, unscaled), edge_density; keys in metadata
    <control_dir>/report.json                      skipped inputs by reason

The control latent is the posterior *mean*, in training and in sampling alike: the control is a
condition, not a sample to be modelled, so it is kept deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from pixart_lab.data.datamodule import FeatureDataModule, FeatureDataset
from pixart_lab.data.edges import EdgeDetector, control_image
from pixart_lab.data.features import read_shard
from pixart_lab.data.records import Record, SkipReport
from pixart_lab.data.transforms import load_images


@torch.inference_mode()
def encode_control_latents(vae: AutoencoderKL, edges: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Unscaled VAE posterior means of the control images of uint8 edge maps (N x 1 x H x W)."""
    means = [vae.encode(control_image(edges[i : i + batch_size])).latent_dist.mean for i in range(0, len(edges), batch_size)]
    return torch.cat(means).float()


def encode_control_shard(
    records: Sequence[Record],
    size: tuple[int, int],
    report: SkipReport,
    detector: EdgeDetector,
    vae: AutoencoderKL,
    batch_size: int = 128,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Edge maps of one shard's images and their control latents (a :data:`ShardEncoder` once bound)."""
    images, kept = load_images(records, *size, report=report, progress=False)
    edges = detector(images)
    tensors = {
        "control_mean": encode_control_latents(vae, edges, batch_size).contiguous(),
        "edge_density": edges.float().div(255).mean(dim=(1, 2, 3)),
    }
    return tensors, [r.key for r in kept]


class ControlFeatureDataset(FeatureDataset):
    """A :class:`FeatureDataset` whose items also carry ``control``: the scaled control latent of the same key."""

    def __init__(self, split_dir: str | Path, control_dir: str | Path, scaling_factor: float, caption: str = "dense",
                 min_aesthetic: float | None = None):  # fmt: skip
        super().__init__(split_dir, scaling_factor, caption, min_aesthetic)
        control_dir = Path(control_dir)
        index_path = control_dir / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"control feature index not found: {index_path} (run the extract_control stage)")
        rows: dict[str, tuple[int, int]] = {}
        self.control: list[torch.Tensor] = []
        for shard_info in json.loads(index_path.read_text())["shards"]:
            tensors, keys = read_shard(control_dir / shard_info["file"])
            rows.update((key, (len(self.control), i)) for i, key in enumerate(keys))
            self.control.append(tensors["control_mean"])
        missing = [key for key in self.keys if key not in rows]
        if missing:
            raise ValueError(
                f"{control_dir}: no control latent for {len(missing)} of {len(self.keys)} examples of "
                f"{self.split_dir} (e.g. {missing[:3]}); re-run extract_control on the same data"
            )
        self.control_rows = [rows[key] for key in self.keys]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        shard, row = self.control_rows[index]
        item["control"] = self.control[shard][row] * self.scaling_factor
        return item


class ControlFeatureDataModule(FeatureDataModule):
    """:class:`FeatureDataModule` over the image features joined with ``control_dir/<split>``."""

    def __init__(self, features_dir: str | Path, control_dir: str | Path, **kwargs):
        super().__init__(features_dir, **kwargs)
        self.control_dir = Path(control_dir)

    def make_dataset(self, split: str, min_aesthetic: float | None = None) -> ControlFeatureDataset:
        manifest_path = self.control_dir / "manifest.json"
        if not manifest_path.is_file():
            raise FileNotFoundError(f"control feature manifest not found: {manifest_path} (run the extract_control stage)")
        image_vae, control_vae = self.manifest["vae"].get("source"), json.loads(manifest_path.read_text())["vae"].get("source")
        if image_vae and control_vae and image_vae != control_vae:
            raise ValueError(f"{manifest_path}: control latents come from the VAE {control_vae}, image latents from {image_vae}")
        scaling = float(self.manifest["vae"]["scaling_factor"])
        return ControlFeatureDataset(self.features_dir / split, self.control_dir / split, scaling, self.caption, min_aesthetic)
