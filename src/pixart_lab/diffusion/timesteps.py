"""Which timesteps a training step sees, and how much each one's epsilon loss counts.

PixArt-alpha (through DiT / IDDPM) draws t uniformly and weighs every epsilon error equally. Two
published alternatives speed up convergence and are options here:

* logit-normal timesteps (Esser et al., 2024, SD3 Section 3.1): t / (T - 1) = sigmoid(u) with
  u ~ N(mean, std), which concentrates training on the middle of the schedule;
* Min-SNR-gamma weighting (Hang et al., 2023): the epsilon MSE at t is scaled by
  min(SNR_t, gamma) / SNR_t, so that nearly clean timesteps (high SNR) stop dominating the gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.utils.errors import ConfigError

TIMESTEP_SAMPLINGS = ("uniform", "logit_normal")


def sample_timesteps(
    kind: str, n: int, num_timesteps: int, generator: torch.Generator, device: torch.device | str,
    logit_mean: float = 0.0, logit_std: float = 1.0,
) -> Tensor:
    """``n`` integer timesteps in [0, num_timesteps), drawn ``uniform`` or ``logit_normal``."""
    if kind == "uniform":
        return torch.randint(0, num_timesteps, (n,), generator=generator, device=device)
    if kind == "logit_normal":
        u = torch.randn(n, generator=generator, device=device) * logit_std + logit_mean
        return torch.round(torch.sigmoid(u) * (num_timesteps - 1)).long()
    raise ConfigError(f"timestep_sampling={kind!r}: expected one of {', '.join(TIMESTEP_SAMPLINGS)}")


def min_snr_weights(schedule: NoiseSchedule, t: Tensor, gamma: float | None) -> Tensor:
    """Per-sample weights of the epsilon MSE: ``min(SNR_t, gamma) / SNR_t``, or ones if ``gamma`` is None."""
    if gamma is None:
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    if gamma <= 0:
        raise ConfigError(f"min_snr_gamma={gamma}: expected a positive number or null")
    abar = schedule.alphas_cumprod.to(t.device)[t.long()]
    snr = abar / (1.0 - abar)
    return (snr.clamp(max=gamma) / snr).float()
