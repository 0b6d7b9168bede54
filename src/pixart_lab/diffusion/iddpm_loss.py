"""The hybrid objective of Improved DDPM with a learned (interpolated) variance.

Nichol & Dhariwal (2021), "Improved Denoising Diffusion Probabilistic Models": the network outputs
an epsilon prediction and, per dimension, a value v in [-1, 1] that interpolates the reverse-process
log variance between log beta_t and log beta~_t (Eq. 15). Training minimises
L_hybrid = L_simple + lambda L_vlb (Eq. 16) with lambda = 0.001 and a stop-gradient on the mean in
the L_vlb term (Section 3.1). PixArt-alpha (arXiv 2310.00426) keeps this objective through the
DiT code base, which uses IDDPM's ``learned_range`` variance and its ``hybrid`` loss. Stable
Diffusion trains a fixed-variance epsilon model on L_simple alone (:func:`simple_loss`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pixart_lab.diffusion.schedule import NoiseSchedule, per_sample_coef

_LN2 = math.log(2.0)


def _mean_flat(x: Tensor) -> Tensor:
    """Mean over all but the batch dimension."""
    return x.flatten(1).mean(dim=1)


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """Elementwise KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def _approx_standard_normal_cdf(x: Tensor) -> Tensor:
    """Tanh approximation of the standard normal CDF (as in IDDPM's decoder likelihood)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """Log-probability (nats, elementwise) of ``x`` under a Gaussian discretised to 256 bins on [-1, 1].

    IDDPM's decoder p(x_0 | x_1) (Ho et al., 2020, Eq. 13): bins of width 2/255 centred on the grid,
    with the first and last bins extended to -inf and +inf; ``log_scales`` is the log standard
    deviation. Probabilities are clamped at 1e-12 before the log.
    """
    inv_std = torch.exp(-log_scales)
    centred = x - means
    cdf_upper = _approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_lower = _approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_below_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_above_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_in_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    return torch.where(x < -0.999, log_below_upper, torch.where(x > 0.999, log_above_lower, log_in_bin))


def learned_range_log_variance(schedule: NoiseSchedule, var_values: Tensor, t: Tensor) -> Tensor:
    """IDDPM Eq. 15: log Sigma = f log beta_t + (1 - f) log beta~_t with f = (v + 1) / 2."""
    frac = (var_values + 1.0) / 2.0
    max_log = per_sample_coef(torch.log(schedule.betas), t, var_values)
    min_log = per_sample_coef(schedule.posterior_log_variance_clipped, t, var_values)
    return frac * max_log + (1.0 - frac) * min_log


def hybrid_loss(
    schedule: NoiseSchedule,
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    lambda_vlb: float = 0.001,
) -> dict[str, Tensor]:
    """Per-sample IDDPM hybrid loss for an output of 2C channels (epsilon, then variance values).

    Returns tensors of shape [B]:

    * ``"mse"``: L_simple, the mean squared error of the epsilon prediction;
    * ``"vlb"``: the term L_t of the variational bound in bits per dimension, i.e.
      KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0 and the discretised decoder NLL
      -log p(x_0 | x_1) for t = 0. The mean of p uses the epsilon prediction *detached*
      (IDDPM Section 3.1), so this term trains only the variance channels. x_0 is not clipped:
      PixArt diffuses unbounded VAE latents;
    * ``"loss"``: mse + lambda_vlb * T * vlb.

    IDDPM's lambda = 0.001 weighs L_vlb = sum_t L_t, the bound summed over all T steps. With t drawn
    uniformly, T * L_t is an unbiased estimate of that sum, so the per-timestep term is weighted by
    lambda * T (= 1 for T = 1000, which is what the DiT / PixArt code does when it adds the
    unweighted per-step term to the MSE).
    """
    channels = x0.shape[1]
    if model_output.shape[1] != 2 * channels:
        raise ValueError(f"model_output needs {2 * channels} channels, got {model_output.shape[1]}")
    eps, var_values = model_output[:, :channels], model_output[:, channels:]

    mse = _mean_flat((noise - eps) ** 2)

    model_log_var = learned_range_log_variance(schedule, var_values, t)
    x0_pred = schedule.predict_x0_from_eps(x_t, t, eps.detach())
    model_mean, _ = schedule.q_posterior_mean_log_variance(x0_pred, x_t, t)
    true_mean, true_log_var = schedule.q_posterior_mean_log_variance(x0, x_t, t)

    kl = _mean_flat(normal_kl(true_mean, true_log_var, model_mean, model_log_var)) / _LN2
    decoder_nll = -_mean_flat(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var)) / _LN2
    vlb = torch.where(t.to(kl.device) == 0, decoder_nll, kl)

    loss = mse + lambda_vlb * schedule.num_timesteps * vlb
    return {"loss": loss, "mse": mse, "vlb": vlb}


def simple_loss(model_output: Tensor, noise: Tensor) -> dict[str, Tensor]:
    """Per-sample L_simple (DDPM Eq. 14) for an epsilon-only output of C channels: Stable Diffusion's
    objective, with the sampler's fixed variance. Returns ``{"loss", "mse"}`` (equal), shape [B]."""
    if model_output.shape != noise.shape:
        raise ValueError(f"an epsilon-only model must output {tuple(noise.shape)}, got {tuple(model_output.shape)}")
    mse = _mean_flat((noise - model_output) ** 2)
    return {"loss": mse, "mse": mse}
