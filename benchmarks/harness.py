"""What the throughput benchmarks share: the configured model, one bare training step, tables.

The benchmarks run as scripts from the repository root (``python benchmarks/<name>.py``), which puts
this folder on the import path. Models come from ``conf/`` through Hydra's compose API, so
``model=unet_sd`` or ``backbone=xl2`` mean here what they mean to ``train_stage``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import platform
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.models.denoisers import CaptionConditionalPixArt, CaptionConditionalUNet, Denoiser
from pixart_lab.training.diffusion_module import DiffusionModule

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """``conf/train_stage.yaml`` with Hydra ``overrides`` (e.g. ``model=unet_sd``, ``backbone.num_layers=12``)."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train_stage", overrides=list(overrides))


def artefact_overrides(root: str | Path) -> list[str]:
    """Paths of a finished run's ``data/``, ``models/`` and ``features/`` under ``root``."""
    root = Path(root).resolve()
    return [f"paths.data_dir={root / 'data'}", f"paths.models_dir={root / 'models'}", f"paths.features_dir={root / 'features'}"]


def build_denoiser(cfg: DictConfig) -> Denoiser:
    """The configured network in the project's denoiser wrapper. The null caption is zeros: T5("")
    sets values only, not cost, and leaves the benchmark free of the trained text encoder."""
    spec = cfg.model.denoiser
    null = torch.zeros(1, cfg.backbone.caption_channels), torch.ones(1, dtype=torch.long)
    if "unet" in spec:
        return CaptionConditionalUNet(instantiate(spec.unet), *null, text_length=spec.max_length)
    return CaptionConditionalPixArt(instantiate(spec.transformer), *null)


def build_module(cfg: DictConfig, device: str = "cpu") -> DiffusionModule:
    """The stage's ``DiffusionModule`` (objective, optimiser, EMA, switches) around the configured network."""
    return instantiate(cfg.module, denoiser=build_denoiser(cfg)).to(device)


def latent_side(tokens: int, patch_size: int) -> int:
    """Latent side length whose patch grid has ``tokens`` tokens."""
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"tokens must be a square number, got {tokens}")
    return side * patch_size


def random_batch(batch: int, side: int, cfg: DictConfig, caption_tokens: int, device: str = "cpu") -> dict:
    """A batch shaped as the feature loader yields it (latent moments, caption tokens and mask, labels)."""
    channels, width = cfg.backbone.in_channels, cfg.backbone.caption_channels
    return {
        "latent_mean": torch.randn(batch, channels, side, side, device=device),
        "latent_std": torch.full((batch, channels, side, side), 0.05, device=device),
        "caption_emb": torch.randn(batch, caption_tokens, width, device=device),
        "caption_mask": torch.ones(batch, caption_tokens, dtype=torch.long, device=device),
        "label": torch.zeros(batch, dtype=torch.long, device=device),
        "hw": torch.full((batch, 2), float(side * 8), device=device),
        "index": torch.arange(batch),
    }


def to_device(batch: dict, device: str) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "index" else v for k, v in batch.items()}


class TrainingStep:
    """One optimiser step of ``module`` in plain PyTorch, as Lightning runs it for ``train_stage``:
    the module's loss (condition dropout, random timesteps), backward, gradient-norm clipping, the
    optimiser's update and the EMA update. Call it with a batch; it returns the loss."""

    def __init__(self, module: DiffusionModule, grad_clip: float = 1.0, precision: str = "fp32"):
        self.module, self.grad_clip = module, grad_clip
        self.params = [p for p in module.denoiser.parameters() if p.requires_grad]
        self.optimizer = module.optimizer_factory(self.params)
        self.dtype = PRECISIONS[precision]
        self.step = 0

    def __call__(self, batch: dict) -> torch.Tensor:
        module = self.module
        generator = torch.Generator(device=module.device).manual_seed(self.step)
        autocast = torch.autocast(module.device.type, self.dtype) if self.dtype else contextlib.nullcontext()
        with autocast:
            loss = module.diffusion_losses(module.denoiser, batch, generator, drop_conditions=True)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        module.ema.update(module.denoiser)
        self.step += 1
        return loss.detach()


def common_arguments(parser: argparse.ArgumentParser, steps: int = 10) -> argparse.ArgumentParser:
    parser.add_argument("--steps", type=int, default=steps, help="timed steps per arm (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    return parser


def setup(args: argparse.Namespace) -> None:
    """Threads, and a header line that dates the figures and names the machine."""
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name(args.device) if torch.device(args.device).type == "cuda" else platform.processor() or "cpu"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"{now}, {device} ({args.device}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} after {args.warmup} warm-up")  # fmt: skip


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table (pastes into the README as is)."""
    print("| " + " | ".join(headers) + " |")
    print("|" + "---|" * len(headers))
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print(flush=True)
