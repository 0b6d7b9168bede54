"""DreamBooth fine-tuning (Ruiz et al., 2022): the prior-preservation objective and what is trained.

Eq. 2 of the paper, with PixArt's diffusion loss ``L`` (IDDPM hybrid, ``diffusion/iddpm_loss.py``)::

    loss = mean_i L(subject image i, "a ... sks circle ...") + lambda * mean_j L(class image j, "a ... circle ...")

The class images are the frozen base model's own generations for the class prompt, so the second
term anchors what the class noun means to what it meant before fine-tuning (against language drift
and overfitting); lambda = 1 in the paper.

``prior_target="base"`` keeps the class images but changes what the prior term fits: instead of the
noise drawn for each class image, the frozen base model's own prediction on the same noised class
image and class prompt (a distillation of the base, ``L = ||model(x_t, t, c) - base(x_t, t, c)||^2``).
The noise target asks the model to refit the base's samples, which moves it even with no subject at
all (measured in the README); the base's prediction is where the model already is.

What trains is a strategy from ``conf/finetune/``:
:class:`LoraFineTune` (adapters only, saved in diffusers' LoRA layout) or :class:`FullFineTune`
(every weight, saved as a diffusers transformer folder).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from pixart_lab.models.denoisers import Denoiser
from pixart_lab.models.lora import PIXART_LORA_TARGETS, add_lora, lora_config, save_lora
from pixart_lab.training.checkpoints import WEIGHTS_FILE, export_network
from pixart_lab.training.diffusion_module import DiffusionModule
from pixart_lab.utils.errors import ConfigError

PRIOR_TARGETS = ("noise", "base")  # what the prior term fits on a class image: DreamBooth's noise, or the base's prediction


class PriorPreservationModule(DiffusionModule):
    """:class:`DiffusionModule` whose training loss is DreamBooth's instance + lambda * prior loss.

    Batches come from ``data.dreambooth.DreamBoothDataModule``: ``batch["instance"]`` marks the subject
    rows; the others are class rows. Timesteps, noise and caption dropout are drawn per row as in
    every stage, so both terms are unbiased estimates of the same diffusion loss on their images.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        optimizer,
        prior_loss_weight: float = 1.0,
        prior_target: str = "noise",
        reference: Denoiser | None = None,
        **kwargs,
    ):
        super().__init__(denoiser, optimizer, **kwargs)
        if prior_target not in PRIOR_TARGETS:
            raise ConfigError(f"module.prior_target={prior_target!r}: expected one of {', '.join(PRIOR_TARGETS)}")
        if prior_target == "base" and reference is None:
            raise ConfigError("module.prior_target=base needs the frozen base model as reference")
        self.prior_loss_weight, self.prior_target = float(prior_loss_weight), prior_target
        # Frozen, and outside the optimiser (which takes the denoiser's trainable weights only).
        self.reference = reference.requires_grad_(False).eval() if prior_target == "base" else None

    def train(self, mode: bool = True) -> PriorPreservationModule:
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        generator = self._generator(self.global_step)
        parts = self.per_sample_losses(self.denoiser, batch, generator, drop_conditions=True, reference=self.reference, training=True)
        instance = batch["instance"].to(parts["loss"].device)
        instance_loss = parts["loss"][instance].mean()
        prior = parts["distill"] if self.prior_target == "base" else parts["loss"]
        prior_loss = prior[~instance].mean() if (~instance).any() else torch.zeros_like(instance_loss)
        loss = instance_loss + self.prior_loss_weight * prior_loss
        logged = {"loss": loss, "instance_loss": instance_loss, "prior_loss": prior_loss,
                  "mse": parts["mse"].mean(), "vlb": parts["vlb"].mean()}  # fmt: skip
        self.log_dict({f"train/{k}": v for k, v in logged.items()}, prog_bar=True, batch_size=len(instance))
        return loss


class LoraFineTune:
    """Train LoRA adapters on the PixArt transformer (base frozen); save ``lora/pytorch_lora_weights.safetensors``."""

    name = "lora"

    def __init__(self, rank: int = 4, alpha: float = 4.0, target_modules: Sequence[str] = PIXART_LORA_TARGETS, dropout: float = 0.0):
        self.config = lora_config(rank, alpha, target_modules, dropout)

    def prepare(self, transformer: nn.Module) -> nn.Module:
        """A copy of ``transformer`` with fresh adapters (the copy's output equals the base's at first)."""
        return add_lora(copy.deepcopy(transformer).train(), self.config)

    def save(self, transformer: nn.Module, run_dir: str | os.PathLike) -> Path:
        return save_lora(transformer, Path(run_dir) / "lora")


class FullFineTune:
    """Train every weight of a copy of the transformer; save it as ``transformer/`` (diffusers format)."""

    name = "full"

    def prepare(self, transformer: nn.Module) -> nn.Module:
        return copy.deepcopy(transformer).train().requires_grad_(True)

    def save(self, transformer: nn.Module, run_dir: str | os.PathLike) -> Path:
        return export_network(transformer, run_dir) / WEIGHTS_FILE


def trainable_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
