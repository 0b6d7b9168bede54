"""The discrete-time Gaussian noise schedule of DDPM / IDDPM, as used by PixArt-alpha.

PixArt-alpha (Chen et al., 2023, arXiv 2310.00426) trains with the DiT code base, itself built on
the diffusion utilities of Improved DDPM (Nichol & Dhariwal, 2021): a "linear" schedule of
T = 1000 betas from 1e-4 to 0.02 (Ho et al., 2020), the forward process
q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) and the Gaussian posterior
q(x_{t-1} | x_t, x_0) of IDDPM Eqs. 10-12. All tables are kept in float64, as in IDDPM, and are
cast to the dtype of the tensor they scale. Stable Diffusion's "scaled_linear" schedule (betas
linear in sqrt(beta) from 0.00085 to 0.012) serves the SD-class baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def per_sample_coef(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """``table[t]`` cast to ``x``'s dtype/device, shaped ``[B, 1, ..., 1]`` to broadcast over ``x``."""
    values = table.to(device=x.device, dtype=x.dtype)[t.to(x.device).long()]
    return values.reshape(-1, *([1] * (x.dim() - 1)))


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """Precomputed float64 tables (length T) of a DDPM noise schedule (IDDPM Section 2)."""

    betas: Tensor
    alphas_cumprod: Tensor
    alphas_cumprod_prev: Tensor
    sqrt_alphas_cumprod: Tensor
    sqrt_one_minus_alphas_cumprod: Tensor
    sqrt_recip_alphas_cumprod: Tensor
    sqrt_recipm1_alphas_cumprod: Tensor
    posterior_variance: Tensor
    posterior_log_variance_clipped: Tensor
    posterior_mean_coef1: Tensor
    posterior_mean_coef2: Tensor

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """All tables derived from ``betas`` (1-D, in (0, 1)), in float64."""
        betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be at least two values in (0, 1)")
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # post_var[0] is 0; IDDPM replaces it by post_var[1] before taking the log.
        post_log_var = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return cls(
            betas=betas,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            sqrt_alphas_cumprod=abar.sqrt(),
            sqrt_one_minus_alphas_cumprod=(1.0 - abar).sqrt(),
            sqrt_recip_alphas_cumprod=(1.0 / abar).sqrt(),
            sqrt_recipm1_alphas_cumprod=(1.0 / abar - 1.0).sqrt(),
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=betas * abar_prev.sqrt() / (1.0 - abar),
            posterior_mean_coef2=(1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        )

    @classmethod
    def linear(cls, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> NoiseSchedule:
        """IDDPM's "linear" schedule: endpoints scaled by 1000 / T so that any T matches T = 1000."""
        scale = 1000.0 / num_timesteps
        betas = torch.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=torch.float64)
        return cls.from_betas(betas)

    @classmethod
    def scaled_linear(cls, num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> NoiseSchedule:
        """Stable Diffusion's schedule: ``betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2``.

        The same table as diffusers' ``beta_schedule="scaled_linear"``, so SD samplers match training.
        """
        return cls.from_betas(torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2)

    @classmethod
    def named(cls, beta_schedule: str, num_timesteps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
        """The schedule diffusers calls ``beta_schedule`` (``linear`` or ``scaled_linear``)."""
        builders = {"linear": cls.linear, "scaled_linear": cls.scaled_linear}
        if beta_schedule not in builders:
            raise ValueError(f"beta_schedule={beta_schedule!r}: expected one of {sorted(builders)}")
        return builders[beta_schedule](num_timesteps, beta_start, beta_end)

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise (DDPM Eq. 4, IDDPM Eq. 9)."""
        return (
            per_sample_coef(self.sqrt_alphas_cumprod, t, x0) * x0
            + per_sample_coef(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Invert :meth:`q_sample` for x_0 given a noise estimate (IDDPM Eq. 11 rearranged)."""
        return (
            per_sample_coef(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - per_sample_coef(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def q_posterior_mean_log_variance(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and (clipped) log variance of q(x_{t-1} | x_t, x_0) (IDDPM Eqs. 10-12)."""
        coef1 = per_sample_coef(self.posterior_mean_coef1, t, x_t)
        mean = coef1 * x0 + per_sample_coef(self.posterior_mean_coef2, t, x_t) * x_t
        log_var = per_sample_coef(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, log_var
