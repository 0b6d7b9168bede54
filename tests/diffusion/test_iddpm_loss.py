"""IDDPM hybrid loss (Nichol & Dhariwal, 2021, Eqs. 15-16) against hand-derived closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from pixart_lab.diffusion.iddpm_loss import (
    discretized_gaussian_log_likelihood,
    hybrid_loss,
    learned_range_log_variance,
    normal_kl,
)
from pixart_lab.diffusion.schedule import NoiseSchedule

LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.linear()


def _batch(sched: NoiseSchedule, t: int, d: float, v: float, b: int = 2, c: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(b, c, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(b, c, 3, 3, generator=g, dtype=torch.float64)
    tt = torch.full((b,), t)
    x_t = sched.q_sample(x0, tt, noise)
    out = torch.cat([noise + d, torch.full_like(noise, v)], dim=1)
    return out, x0, x_t, tt, noise


def test_normal_kl_closed_form() -> None:
    kl = normal_kl(torch.tensor(1.0), torch.tensor(math.log(4.0)), torch.tensor(0.0), torch.tensor(0.0))
    assert kl.item() == pytest.approx(0.5 * (4.0 + 1.0 - 1.0 - math.log(4.0)))
    assert normal_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3), torch.tensor(-1.0)).item() == 0.0


def test_learned_range_endpoints(sched: NoiseSchedule) -> None:
    t = torch.tensor([0, 7, 999])
    lo = learned_range_log_variance(sched, -torch.ones(3, 2, dtype=torch.float64), t)
    hi = learned_range_log_variance(sched, torch.ones(3, 2, dtype=torch.float64), t)
    mid = learned_range_log_variance(sched, torch.zeros(3, 2, dtype=torch.float64), t)
    torch.testing.assert_close(lo[:, 0], sched.posterior_log_variance_clipped[t])
    torch.testing.assert_close(hi[:, 0], sched.betas[t].log())
    torch.testing.assert_close(mid, (lo + hi) / 2)


@pytest.mark.parametrize("t", [1, 40, 999])
def test_mean_error_gives_closed_form_kl(sched: NoiseSchedule, t: int) -> None:
    d = 0.1
    losses = hybrid_loss(sched, *_batch(sched, t, d, v=-1.0))
    torch.testing.assert_close(losses["mse"], torch.full((2,), d * d, dtype=torch.float64))
    delta_mean = sched.posterior_mean_coef1[t].item() * (-sched.sqrt_recipm1_alphas_cumprod[t].item() * d)
    expected = delta_mean**2 / (2 * sched.posterior_variance[t].item()) / LN2
    torch.testing.assert_close(losses["vlb"], torch.full((2,), expected, dtype=torch.float64))
    assert expected > 1e-4  # the case is not trivially zero


def test_exact_model_has_zero_vlb(sched: NoiseSchedule) -> None:
    losses = hybrid_loss(sched, *_batch(sched, 123, d=0.0, v=-1.0))
    torch.testing.assert_close(losses["vlb"], torch.zeros(2, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(losses["mse"], torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("t", [1, 500])
def test_beta_variance_kl_closed_form(sched: NoiseSchedule, t: int) -> None:
    losses = hybrid_loss(sched, *_batch(sched, t, d=0.0, v=1.0))
    beta, post = sched.betas[t].item(), sched.posterior_variance[t].item()
    expected = 0.5 * (math.log(beta / post) + post / beta - 1.0) / LN2
    assert expected > 0
    torch.testing.assert_close(losses["vlb"], torch.full((2,), expected, dtype=torch.float64))


def test_loss_is_mse_plus_weighted_vlb(sched: NoiseSchedule) -> None:
    out, x0, x_t, _, noise = _batch(sched, 0, d=0.05, v=0.3)
    t = torch.tensor([0, 400])
    x_t = sched.q_sample(x0, t, noise)
    losses = hybrid_loss(sched, out, x0, x_t, t, noise)
    assert all(v.shape == (2,) for v in losses.values())
    torch.testing.assert_close(losses["loss"], losses["mse"] + 0.001 * 1000 * losses["vlb"])
    half = hybrid_loss(NoiseSchedule.linear(500), out, x0, x_t, t, noise)
    torch.testing.assert_close(half["loss"], half["mse"] + 0.5 * half["vlb"])


def _normal_bin_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    n = Normal(mean, std)
    return torch.log(n.cdf(x + 1 / 255) - n.cdf(x - 1 / 255))


def test_discretized_likelihood_matches_exact_cdf() -> None:
    g = torch.Generator().manual_seed(4)
    x = (torch.randint(1, 254, (500,), generator=g).double() / 127.5) - 1.0
    std = torch.empty(500, dtype=torch.float64).uniform_(0.004, 0.05, generator=g)
    # Interior points within one std of the mean: there the tanh CDF approximation is good to ~1e-3
    # in log-probability (it degrades in the tails, where bins hold little mass).
    mean = x + std * (2 * torch.rand(500, generator=g, dtype=torch.float64) - 1)
    ours = discretized_gaussian_log_likelihood(x, mean, std.log())
    torch.testing.assert_close(ours, _normal_bin_log_prob(x, mean, std), atol=1.5e-3, rtol=0)
    # A bin far in the tail is clamped at 1e-12 rather than giving -inf.
    far = discretized_gaussian_log_likelihood(torch.tensor([0.0]), torch.tensor([0.9]), torch.tensor([-6.0]))
    assert far.item() == pytest.approx(math.log(1e-12))
    # Edge bins are open-ended: at x = -1 all mass below -1 + 1/255 counts, at x = +1 all mass above.
    edge_x = torch.tensor([-1.0, 1.0], dtype=torch.float64)
    edge_mean = torch.tensor([-0.98, 0.99], dtype=torch.float64)
    edge_std = torch.tensor([0.02, 0.01], dtype=torch.float64)
    n = Normal(edge_mean, edge_std)
    expected = torch.stack([n.cdf(edge_x[0] + 1 / 255)[0].log(), (1 - n.cdf(edge_x[1] - 1 / 255)[1]).log()])
    ours_edge = discretized_gaussian_log_likelihood(edge_x, edge_mean, edge_std.log())
    torch.testing.assert_close(ours_edge, expected, atol=1e-3, rtol=0)


def test_t0_term_is_decoder_nll(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(5)
    x0 = torch.randint(1, 254, (2, 3, 4, 4), generator=g).double() / 127.5 - 1.0
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.zeros(2, dtype=torch.long)
    x_t = sched.q_sample(x0, t, noise)
    d = 0.2
    out = torch.cat([noise + d, torch.full_like(noise, -1.0)], dim=1)
    losses = hybrid_loss(sched, out, x0, x_t, t, noise)
    # At t = 0, abar_prev = 1 so the posterior mean is the predicted x0 and the variance is beta~_1.
    mean = x0 - sched.sqrt_recipm1_alphas_cumprod[0].item() * d
    std = torch.tensor(sched.posterior_variance[1].item(), dtype=torch.float64).sqrt()
    expected = -_normal_bin_log_prob(x0, mean, std).flatten(1).mean(1) / LN2
    torch.testing.assert_close(losses["vlb"], expected, atol=2e-3, rtol=0)
    assert (losses["vlb"] > 0).all()


def test_vlb_trains_only_variance_channels(sched: NoiseSchedule) -> None:
    out, x0, _, _, noise = _batch(sched, 0, d=0.3, v=0.2, b=3)
    out = (out + 0.1 * torch.randn_like(out)).requires_grad_(True)
    t = torch.tensor([0, 1, 700])
    x_t = sched.q_sample(x0, t, noise)
    losses = hybrid_loss(sched, out, x0, x_t, t, noise)
    c = x0.shape[1]
    (g_vlb,) = torch.autograd.grad(losses["vlb"].sum(), out, retain_graph=True)
    assert torch.equal(g_vlb[:, :c], torch.zeros_like(g_vlb[:, :c]))
    assert (g_vlb[:, c:].abs().flatten(1).sum(1) > 0).all()
    (g_mse,) = torch.autograd.grad(losses["mse"].sum(), out)
    assert torch.equal(g_mse[:, c:], torch.zeros_like(g_mse[:, c:]))
    assert (g_mse[:, :c].abs().flatten(1).sum(1) > 0).all()


def test_float32_inputs_stay_float32(sched: NoiseSchedule) -> None:
    out, x0, x_t, t, noise = (a.float() if a.is_floating_point() else a for a in _batch(sched, 10, 0.1, 0.0))
    losses = hybrid_loss(sched, out, x0, x_t, t, noise)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in losses.values())
