"""The LightningModule of every curriculum stage: a denoiser trained with PixArt's objective.

PixArt-alpha (Section 2.3 / its configs) trains epsilon plus learned variance with the IDDPM hybrid
loss, uniform timesteps over a 1000-step linear schedule, 10% condition dropout for classifier-free
guidance, AdamW (lr 2e-5, weight decay 3e-2, eps 1e-10) with the learning rate scaled by
sqrt(effective batch / base batch), warm-up, gradient clipping and EMA weights for sampling. The
SD-class baseline trains through the same module with Stable Diffusion's objective instead
(``beta_schedule="scaled_linear"``, ``learned_variance=False``: epsilon MSE, fixed variance).

All randomness of a step (posterior sample, timesteps, noise, condition dropout) comes from a
generator seeded by ``(seed, global_step)``: a run resumed from a mid-stage checkpoint continues
the same loss sequence, and validation sees identical noise at every evaluation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import lightning as L
import torch

from pixart_lab.data.datamodule import sample_latents
from pixart_lab.diffusion.iddpm_loss import hybrid_loss, simple_loss
from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.models.denoisers import Denoiser
from pixart_lab.training.ema import EMA
from pixart_lab.training.lr_schedule import warmup_cosine


def sqrt_scaled_lr(lr: float, effective_batch_size: int, base_batch_size: int) -> float:
    """PixArt's ``auto_lr`` rule 'sqrt': ``lr * sqrt(effective_batch_size / base_batch_size)``."""
    return lr * math.sqrt(effective_batch_size / base_batch_size)


class DiffusionModule(L.LightningModule):
    """Trains ``denoiser`` on feature batches; keeps an EMA copy for validation, sampling and export."""

    def __init__(
        self,
        denoiser: Denoiser,
        optimizer: Callable[..., torch.optim.Optimizer],
        num_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        lambda_vlb: float = 0.001,
        beta_schedule: str = "linear",
        learned_variance: bool = True,
        condition_dropout: float = 0.1,
        base_batch_size: int = 256,
        warmup_steps: int = 1000,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        gradient_checkpointing: bool = False,
        seed: int = 0,
    ):
        super().__init__()
        self.denoiser = denoiser
        self.ema = EMA(denoiser, ema_decay, ema_warmup)
        self.schedule = NoiseSchedule.named(beta_schedule, num_timesteps, beta_start, beta_end)
        self.optimizer_factory = optimizer
        self.lambda_vlb, self.learned_variance, self.condition_dropout = lambda_vlb, learned_variance, condition_dropout
        self.base_batch_size, self.warmup_steps, self.seed = base_batch_size, warmup_steps, seed
        if gradient_checkpointing:
            denoiser.network.enable_gradient_checkpointing()
        self._batch_start: float | None = None
        self._batch_size = 0

    def _generator(self, offset: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + offset)

    def diffusion_losses(
        self, denoiser: Denoiser, batch: dict, generator: torch.Generator, drop_conditions: bool
    ) -> dict[str, torch.Tensor]:
        """Batch-mean loss (and its parts) of ``denoiser`` at random timesteps."""
        return {k: v.mean() for k, v in self.example_losses(denoiser, batch, generator, drop_conditions).items()}

    def example_losses(
        self, denoiser: Denoiser, batch: dict, generator: torch.Generator, drop_conditions: bool
    ) -> dict[str, torch.Tensor]:
        """Per-example loss (hybrid, or L_simple for a fixed variance; and its parts) of ``denoiser`` at random timesteps, each of shape [N]."""
        x0 = sample_latents(batch, generator)
        n = x0.shape[0]
        t = torch.randint(0, self.schedule.num_timesteps, (n,), generator=generator, device=self.device)
        noise = torch.randn(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        if drop_conditions and self.condition_dropout > 0:
            drop = torch.rand(n, generator=generator, device=self.device) < self.condition_dropout
            batch = denoiser.drop_conditions(batch, drop)
        x_t = self.schedule.q_sample(x0, t, noise)
        output = denoiser(x_t, t, batch).float()  # the loss in float32, also under bf16/fp16 autocast
        if self.learned_variance:
            return hybrid_loss(self.schedule, output, x0.float(), x_t.float(), t, noise.float(), self.lambda_vlb)
        return simple_loss(output, noise.float())

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.diffusion_losses(self.denoiser, batch, self._generator(self.global_step), drop_conditions=True)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=batch["latent_mean"].shape[0])
        return losses["loss"]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Throughput of the previous whole step (data, forward, backward, optimiser, EMA).
        now = time.perf_counter()
        if self._batch_start is not None:
            self.log("train/samples_per_s", self._batch_size / (now - self._batch_start))
        self._batch_start, self._batch_size = now, batch["latent_mean"].shape[0]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.denoiser.parameters() if p.grad is not None]
        self.log("train/grad_norm", torch.nn.utils.get_total_norm(grads))  # before clipping

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        self.ema.update(self.denoiser)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        n = batch["latent_mean"].shape[0]
        # Offset far from training steps; the same noise at every evaluation makes curves comparable.
        for name, denoiser in (("", self.denoiser), ("ema_", self.ema.module)):
            losses = self.diffusion_losses(denoiser, batch, self._generator(-1 - batch_idx), drop_conditions=False)
            self.log_dict({f"val/{name}{k}": v for k, v in losses.items()}, batch_size=n)

    def effective_batch_size(self) -> int:
        loader_batch = self.trainer.datamodule.batch_size if self.trainer.datamodule else self.base_batch_size
        return int(loader_batch * self.trainer.accumulate_grad_batches * self.trainer.world_size)

    def configure_optimizers(self):
        # Frozen weights (a ControlNet's base model, a LoRA fine-tune's base) stay out of the optimiser, weight decay included.
        optimizer = self.optimizer_factory([p for p in self.denoiser.parameters() if p.requires_grad])
        for group in optimizer.param_groups:
            group["lr"] = sqrt_scaled_lr(group["lr"], self.effective_batch_size(), self.base_batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(warmup_cosine, self.warmup_steps, None))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
