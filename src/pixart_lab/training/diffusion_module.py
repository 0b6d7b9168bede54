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

A step whose loss or gradients are not finite stops the run (``nan_policy="stop"``), naming the
step and its samples, before any weight, optimiser state or checkpoint sees it; ``"skip"`` drops
that optimiser step (and its EMA update) instead and counts it in ``train/skipped_steps``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from functools import partial

import lightning as L
import torch

from pixart_lab.data.datamodule import sample_latents
from pixart_lab.diffusion.iddpm_loss import hybrid_loss, simple_loss
from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.diffusion.timesteps import TIMESTEP_SAMPLINGS, min_snr_weights, sample_timesteps
from pixart_lab.models.denoisers import Denoiser
from pixart_lab.training.ema import EMA
from pixart_lab.training.lr_schedule import warmup_cosine
from pixart_lab.utils.errors import ConfigError, NonFiniteError

log = logging.getLogger(__name__)

NAN_POLICIES = ("stop", "skip")


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
        compile_network: bool = False,
        seed: int = 0,
        nan_policy: str = "stop",
        max_skipped_steps: int = 100,
        timestep_sampling: str = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        min_snr_gamma: float | None = None,
    ):
        super().__init__()
        if nan_policy not in NAN_POLICIES:
            raise ConfigError(f"module.nan_policy={nan_policy!r}: expected one of {', '.join(NAN_POLICIES)}")
        if timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"module.timestep_sampling={timestep_sampling!r}: expected one of {', '.join(TIMESTEP_SAMPLINGS)}")
        if min_snr_gamma is not None and min_snr_gamma <= 0:
            raise ConfigError(f"module.min_snr_gamma={min_snr_gamma}: expected a positive number or null")
        self.timestep_sampling, self.logit_mean, self.logit_std = timestep_sampling, logit_mean, logit_std
        self.min_snr_gamma = min_snr_gamma
        self.denoiser = denoiser
        self.ema = EMA(denoiser, ema_decay, ema_warmup)
        self.schedule = NoiseSchedule.named(beta_schedule, num_timesteps, beta_start, beta_end)
        self.optimizer_factory = optimizer
        self.lambda_vlb, self.learned_variance, self.condition_dropout = lambda_vlb, learned_variance, condition_dropout
        self.base_batch_size, self.warmup_steps, self.seed = base_batch_size, warmup_steps, seed
        if gradient_checkpointing:
            denoiser.network.enable_gradient_checkpointing()
        if compile_network:  # in place, after the EMA copy: parameter names (checkpoints, exports) stay the network's
            denoiser.network.compile()
        self.nan_policy, self.max_skipped_steps = nan_policy, max_skipped_steps
        # A buffer, so the count is saved in checkpoints and survives a resume.
        self.register_buffer("skipped_steps", torch.zeros((), dtype=torch.long))
        self._batch_start: float | None = None
        self._batch_size = 0
        self._step_indices: list[torch.Tensor] = []  # sample indices of the micro-batches since the last update
        self._skip_update = False

    def _generator(self, offset: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + offset)

    def per_sample_losses(
        self, denoiser: Denoiser, batch: dict, generator: torch.Generator, drop_conditions: bool,
        reference: Denoiser | None = None, training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Loss (hybrid, or L_simple for a fixed variance) and its parts of every sample of the batch, at random timesteps.

        ``training`` draws the timesteps with ``timestep_sampling`` and weighs the epsilon MSE by
        Min-SNR (``"loss"`` only; ``"mse"`` stays unweighted); otherwise (validation) t is uniform and
        unweighted, so that runs with different objectives compare on one figure. With a frozen
        ``reference`` denoiser, also ``"distill"``: the mean squared difference between the two
        networks' outputs on the same noised inputs and conditions.
        """
        x0 = sample_latents(batch, generator)
        n = x0.shape[0]
        kind = self.timestep_sampling if training else "uniform"
        t = sample_timesteps(kind, n, self.schedule.num_timesteps, generator, self.device, self.logit_mean, self.logit_std)
        noise = torch.randn(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        if drop_conditions and self.condition_dropout > 0:
            drop = torch.rand(n, generator=generator, device=self.device) < self.condition_dropout
            batch = denoiser.drop_conditions(batch, drop)
        x_t = self.schedule.q_sample(x0, t, noise)
        output = denoiser(x_t, t, batch).float()  # the loss in float32, also under bf16/fp16 autocast
        if self.learned_variance:
            parts = hybrid_loss(self.schedule, output, x0.float(), x_t.float(), t, noise.float(), self.lambda_vlb)
        else:
            parts = simple_loss(output, noise.float())
        if training and self.min_snr_gamma is not None:
            parts["loss"] = parts["loss"] + (min_snr_weights(self.schedule, t, self.min_snr_gamma) - 1.0) * parts["mse"]
        if reference is not None:
            with torch.no_grad():
                target = reference(x_t, t, batch).float()
            parts["distill"] = (output - target).pow(2).flatten(1).mean(1)
        return parts

    def diffusion_losses(
        self, denoiser: Denoiser, batch: dict, generator: torch.Generator, drop_conditions: bool
    ) -> dict[str, torch.Tensor]:
        """Batch-mean loss (and its parts) of ``denoiser`` at random timesteps."""
        parts = self.per_sample_losses(denoiser, batch, generator, drop_conditions)
        return {k: v.mean() for k, v in parts.items()}

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | None:
        self._step_indices.append(batch["index"])
        parts = self.per_sample_losses(self.denoiser, batch, self._generator(self.global_step), drop_conditions=True, training=True)
        losses = {k: v.mean() for k, v in parts.items()}
        if not torch.isfinite(losses["loss"]):
            self._non_finite("loss", batch["index"][~torch.isfinite(parts["loss"])], float(losses["loss"]))
            return None  # skipped: Lightning runs no backward, the optimiser has no gradient to apply
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True, batch_size=batch["latent_mean"].shape[0])
        return losses["loss"]

    def _non_finite(self, what: str, indices: torch.Tensor, value: float) -> None:
        """Stop the run (``nan_policy="stop"``) or mark this optimiser step as skipped, naming step and samples."""
        keys = self.sample_keys(indices if len(indices) else torch.cat(self._step_indices))
        where = f"step {self.global_step + 1}: {what} is {value} (samples: {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})"
        if self.nan_policy == "stop":
            checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            raise NonFiniteError(
                f"{where}; stopped before the update (module.nan_policy=stop), last checkpoint: {checkpoint}; "
                "module.nan_policy=skip skips such steps"
            )
        self._skip_update = True
        self.skipped_steps += 1
        log.warning("%s; optimiser step skipped (%d so far, module.nan_policy=skip)", where, int(self.skipped_steps))
        if int(self.skipped_steps) > self.max_skipped_steps:
            raise NonFiniteError(f"{where}; more than module.max_skipped_steps={self.max_skipped_steps} steps skipped")

    def sample_keys(self, indices: torch.Tensor) -> list[str]:
        """Record keys of training-set ``indices`` (the batch's ``index``), or the indices where unknown."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        keys = getattr(dataset, "keys", None)
        return [keys[i] if keys else f"index {i}" for i in indices.tolist()]

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Throughput of the previous whole step (data, forward, backward, optimiser, EMA).
        now = time.perf_counter()
        if self._batch_start is not None:
            self.log("train/samples_per_s", self._batch_size / (now - self._batch_start))
        self._batch_start, self._batch_size = now, batch["latent_mean"].shape[0]

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # After backward (and AMP unscaling), before clipping and the update.
        self.log("train/skipped_steps", self.skipped_steps.float())
        params = [p for p in self.denoiser.parameters() if p.grad is not None]
        if not params:  # the step's loss was skipped: no backward ran
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        self.log("train/grad_norm", norm)  # before clipping
        # fp16's GradScaler skips inf/NaN steps itself (and lowers its scale): leave those to it.
        if not self._skip_update and not torch.isfinite(norm) and getattr(self.trainer.precision_plugin, "scaler", None) is None:
            self._non_finite("gradient norm", torch.tensor([], dtype=torch.long), float(norm))
        if self._skip_update:
            for p in params:
                p.grad = None  # AdamW leaves parameters without a gradient (and their moments) untouched

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end hook,
        # so an EMA updated there would be saved one update behind and a resumed run would lose it.
        if not self._skip_update:
            self.ema.update(self.denoiser)
        self._skip_update, self._step_indices = False, []

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
