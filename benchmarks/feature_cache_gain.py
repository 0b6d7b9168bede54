"""Training throughput from the feature cache against encoding every batch on the fly (images -> VAE, captions -> T5).

    python benchmarks/feature_cache_gain.py [--artefacts .] [--split heldout] [--steps 10] [--batch 64]

Both arms train the configured ``DiffusionModule`` (``harness.TrainingStep``) on the same examples.
Cached: batches from the ``FeatureDataModule`` loader over ``features/``. On the fly: each batch's
images are read from ``data/`` and encoded with the trained VAE and frozen T5 by the same function
that fills the cache (``pixart_lab.data.features.encode_shard``), then trained on. ``--artefacts`` is
the folder holding ``data/``, ``models/`` and ``features/`` (a finished ``dvc repro``). Target: >= 3x.
"""

from __future__ import annotations

import argparse
import time

import torch
from harness import TrainingStep, artefact_overrides, build_module, common_arguments, compose_config, print_table, setup, to_device
from hydra.utils import instantiate

from pixart_lab.data.features import encode_shard
from pixart_lab.data.records import SkipReport
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.training.throughput import median


def batch_of(tensors: dict, scaling: float, size: tuple[int, int], caption: str) -> dict:
    """A training batch from freshly encoded tensors, as ``FeatureDataset`` and ``collate`` build it from the cache."""
    n = tensors["latent_mean"].shape[0]
    return {
        "latent_mean": tensors["latent_mean"] * scaling,
        "latent_std": tensors["latent_std"] * scaling,
        "caption_emb": tensors[f"{caption}_emb"].float(),
        "caption_mask": tensors[f"{caption}_mask"].long(),
        "label": tensors["label"],
        "aesthetic": tensors["aesthetic"],
        "hw": torch.tensor([size] * n, dtype=torch.float32),
        "index": torch.arange(n),
    }


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--artefacts", default=".", help="folder with data/, models/ and features/")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    setup(args)
    cfg = compose_config(artefact_overrides(args.artefacts))
    data = instantiate(cfg.data_module, train_split=args.split, val_split=None, batch_size=args.batch)
    data.setup()
    size = (cfg.data.image_size, cfg.data.image_size)
    records = [r for r in instantiate(cfg.data.splits[args.split]).records()]
    vae = load_vae(cfg.vae.pretrained).eval().to(args.device, memory_format=torch.channels_last)
    text_encoder = FrozenTextEncoder.from_config(cfg.text_encoder).to(args.device)
    scaling = float(vae.config.scaling_factor)

    torch.manual_seed(0)
    step = TrainingStep(build_module(cfg, args.device), cfg.stage.grad_clip)
    cached, loader = [], iter(data.train_dataloader())
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        step(to_device(next(loader), args.device))
        cached.append(time.perf_counter() - start)

    torch.manual_seed(0)
    step = TrainingStep(build_module(cfg, args.device), cfg.stage.grad_clip)
    fly, encode = [], []
    for i in range(args.warmup + args.steps):
        chunk = records[i * args.batch : (i + 1) * args.batch]
        start = time.perf_counter()
        tensors, _ = encode_shard(chunk, size, SkipReport(), vae, text_encoder, args.batch, torch.float16)
        encoded = time.perf_counter()
        step(to_device(batch_of(tensors, scaling, size, cfg.caption), args.device))
        fly.append(time.perf_counter() - start)
        encode.append(encoded - start)

    cached_s, fly_s, encode_s = (median(x[args.warmup :]) for x in (cached, fly, encode))
    print(f"\n{cfg.model.name}, batch {args.batch}, {size[0]}x{size[1]} px, {args.split} split:")
    print_table(
        ["input", "s/step", "of which encoding", "samples/s", "x on the fly"],
        [
            ["on the fly (image files, VAE, T5)", f"{fly_s:.3f}", f"{encode_s:.3f}", f"{args.batch / fly_s:.1f}", "1.00"],
            ["feature cache", f"{cached_s:.3f}", "0", f"{args.batch / cached_s:.1f}", f"{fly_s / cached_s:.2f}"],
        ],
    )


if __name__ == "__main__":
    main()
