"""NoiseSchedule: IDDPM's linear schedule and the closed forms of q (Nichol & Dhariwal, 2021)."""

from __future__ import annotations

import math

import pytest
import torch

from pixart_lab.diffusion.schedule import NoiseSchedule


@pytest.fixture(scope="module")
def sched() -> NoiseSchedule:
    return NoiseSchedule.linear()


def test_linear_endpoints_and_dtype(sched: NoiseSchedule) -> None:
    assert sched.num_timesteps == 1000
    assert sched.betas.dtype == torch.float64
    assert sched.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert sched.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    assert (sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all()
    assert sched.alphas_cumprod_prev[0].item() == 1.0


def test_linear_rescales_for_fewer_steps() -> None:
    s = NoiseSchedule.linear(num_timesteps=100)
    assert s.betas[0].item() == pytest.approx(1e-3)
    assert s.betas[-1].item() == pytest.approx(0.2)


def test_posterior_tables_match_independent_formulas(sched: NoiseSchedule) -> None:
    for t in (0, 1, 2, 500, 999):
        abar = math.prod(1.0 - b for b in sched.betas[: t + 1].tolist())
        abar_prev = math.prod(1.0 - b for b in sched.betas[:t].tolist())
        beta = sched.betas[t].item()
        assert sched.alphas_cumprod[t].item() == pytest.approx(abar, rel=1e-12)
        assert sched.posterior_variance[t].item() == pytest.approx(beta * (1 - abar_prev) / (1 - abar), abs=1e-15)
        assert sched.posterior_mean_coef1[t].item() == pytest.approx(beta * math.sqrt(abar_prev) / (1 - abar))
        assert sched.posterior_mean_coef2[t].item() == pytest.approx((1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar))
    assert sched.posterior_variance[0].item() == 0.0
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]
    assert sched.posterior_log_variance_clipped[5].item() == pytest.approx(math.log(sched.posterior_variance[5].item()))


def test_q_sample_formula_and_broadcast(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 5, 5, generator=g), torch.randn(3, 4, 5, 5, generator=g)
    t = torch.tensor([0, 250, 999])
    x_t = sched.q_sample(x0, t, noise)
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
    for i, ti in enumerate(t.tolist()):
        abar = sched.alphas_cumprod[ti].item()
        torch.testing.assert_close(x_t[i], math.sqrt(abar) * x0[i] + math.sqrt(1 - abar) * noise[i])


def test_q_sample_moments(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(1)
    n, t = 200_000, 300
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    x_t = sched.q_sample(x0, torch.full((n,), t), torch.randn(n, 1, generator=g, dtype=torch.float64))
    abar = sched.alphas_cumprod[t].item()
    assert x_t.mean().item() == pytest.approx(0.7 * math.sqrt(abar), abs=0.01)
    assert x_t.var().item() == pytest.approx(1 - abar, rel=0.02)


def test_predict_x0_inverts_q_sample(sched: NoiseSchedule) -> None:
    g = torch.Generator().manual_seed(2)
    t = torch.arange(0, 1000, 37)
    x0 = torch.randn(len(t), 2, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(len(t), 2, 3, generator=g, dtype=torch.float64)
    x0_hat = sched.predict_x0_from_eps(sched.q_sample(x0, t, noise), t, noise)
    torch.testing.assert_close(x0_hat, x0, atol=1e-5, rtol=0)


def test_posterior_of_true_x0_is_consistent(sched: NoiseSchedule) -> None:
    """mu~_t(x_t, x_0) equals IDDPM Eq. 11's eps form 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1-abar_t) eps)."""
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 10, 999])
    x0, noise = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    x_t = sched.q_sample(x0, t, noise)
    mean, log_var = sched.q_posterior_mean_log_variance(x0, x_t, t)
    beta = sched.betas[t][:, None]
    expected = (x_t - beta / (1 - sched.alphas_cumprod[t][:, None]).sqrt() * noise) / (1 - beta).sqrt()
    torch.testing.assert_close(mean, expected)
    assert log_var.shape == x_t.shape
    torch.testing.assert_close(log_var[:, 0], sched.posterior_variance[t].log())
