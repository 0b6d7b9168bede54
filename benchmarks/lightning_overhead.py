"""Seconds per training step of the Lightning loop against a bare PyTorch loop: same model, same cached features.

    python benchmarks/lightning_overhead.py [--artefacts .] [--split heldout] [--steps 30] [--batch 64]

Both loops read the feature cache through the same ``FeatureDataModule`` loader and train the same
configured ``DiffusionModule`` (a fresh copy each, same seed). The bare loop runs
``harness.TrainingStep`` (loss, backward, clipping, AdamW, EMA); the Lightning arms run ``Trainer.fit``
with the stage's trainer config (no loggers, checkpoints or validation), once without and once with
the progress bar that ``train_stage`` shows. A step is the time between the starts of consecutive
batches, so data loading and every hook are inside it. Target: Lightning <= 1.05 x the bare loop.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch
from harness import TrainingStep, artefact_overrides, build_module, common_arguments, compose_config, print_table, setup, to_device
from hydra.utils import instantiate

from pixart_lab.training.throughput import median


class StepClock(L.Callback):
    """Reads the clock at the start of every training batch."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module) -> None:
        self.starts.append(time.perf_counter())


def step_seconds(starts: list[float], warmup: int) -> list[float]:
    return [b - a for a, b in zip(starts, starts[1:])][warmup:]


def lightning_steps(cfg, data, args, progress_bar: bool) -> list[float]:
    torch.manual_seed(args.seed)
    module = build_module(cfg, args.device)
    clock = StepClock()
    trainer = instantiate(
        cfg.trainer, max_steps=args.warmup + args.steps, logger=False, callbacks=[clock], enable_checkpointing=False,
        enable_progress_bar=progress_bar, limit_val_batches=0, accelerator=args.device, plugins=None,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    return step_seconds(clock.starts, args.warmup)


def bare_steps(cfg, data, args) -> list[float]:
    torch.manual_seed(args.seed)
    step = TrainingStep(build_module(cfg, args.device), cfg.stage.grad_clip)
    starts = []
    loader = data.train_dataloader()
    while len(starts) <= args.warmup + args.steps:
        for batch in loader:
            starts.append(time.perf_counter())
            if len(starts) > args.warmup + args.steps:
                break
            step(to_device(batch, args.device))
    return step_seconds(starts, args.warmup)


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), steps=30)
    parser.add_argument("--artefacts", default=".", help="folder holding features/ (a finished dvc repro)")
    parser.add_argument("--split", default="heldout", help="split to train on (heldout: 2000 examples, quick to load)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of train_stage (e.g. model=unet_sd)")
    args = parser.parse_args()
    setup(args)
    cfg = compose_config([*artefact_overrides(args.artefacts), *args.overrides])
    data = instantiate(cfg.data_module, train_split=args.split, val_split=None, batch_size=args.batch)
    data.setup()
    arms = {
        "bare PyTorch loop": bare_steps(cfg, data, args),
        "Lightning, no progress bar": lightning_steps(cfg, data, args, progress_bar=False),
        "Lightning, progress bar (as train_stage)": lightning_steps(cfg, data, args, progress_bar=True),
    }
    bare = median(arms["bare PyTorch loop"])
    print(f"\n{cfg.model.name}, batch {args.batch}, {args.split} split of {cfg.paths.features_dir}:")
    rows = [[name, f"{median(s):.4f}", f"{args.batch / median(s):.1f}", f"{median(s) / bare:.3f}"] for name, s in arms.items()]
    print_table(["loop", "s/step", "samples/s", "x bare"], rows)


if __name__ == "__main__":
    main()
