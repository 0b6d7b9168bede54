"""Timestep sampling and Min-SNR weighting: distributions, weights and the module's use of them."""

import pytest
import torch

from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.diffusion.timesteps import min_snr_weights, sample_timesteps
from pixart_lab.utils.errors import ConfigError


def _draw(kind: str, n: int = 20000, **kwargs) -> torch.Tensor:
    return sample_timesteps(kind, n, 1000, torch.Generator().manual_seed(0), "cpu", **kwargs)


def test_uniform_timesteps_cover_the_schedule_evenly():
    t = _draw("uniform")
    assert t.dtype == torch.long and int(t.min()) >= 0 and int(t.max()) <= 999
    counts = torch.histc(t.float(), bins=4, min=0, max=999)
    assert (counts / counts.sum() - 0.25).abs().max() < 0.02


def test_logit_normal_timesteps_concentrate_on_the_middle():
    t = _draw("logit_normal")
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    middle = ((t >= 250) & (t < 750)).float().mean()
    assert middle > 0.7  # P(|u| < logit(0.75) = 1.0986) = 0.73 for u ~ N(0, 1); uniform gives 0.5
    assert abs(float(t.float().median()) - 499.5) < 15
    shifted = _draw("logit_normal", logit_mean=1.0)
    assert float(shifted.float().median()) > 700  # sigmoid(1) * 999 = 730


def test_unknown_timestep_sampling_is_a_config_error():
    with pytest.raises(ConfigError, match="timestep_sampling='cosine'"):
        _draw("cosine")


def test_min_snr_weights_cap_high_snr_timesteps():
    schedule = NoiseSchedule.linear(1000)
    t = torch.tensor([0, 100, 500, 999])
    weights = min_snr_weights(schedule, t, 5.0)
    abar = schedule.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = torch.minimum(snr, torch.tensor(5.0, dtype=torch.float64)) / snr
    torch.testing.assert_close(weights, expected.float())
    assert weights[0] < 1e-3 and float(weights[-1]) == 1.0  # SNR(0) ~ 1e4; SNR(999) ~ 4e-5 < 5
    assert torch.equal(min_snr_weights(schedule, t, None), torch.ones(4))
    with pytest.raises(ConfigError, match="min_snr_gamma=0"):
        min_snr_weights(schedule, t, 0)
