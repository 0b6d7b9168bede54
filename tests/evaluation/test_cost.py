import logging
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pixart_lab.evaluation.cost import CostConfig, EnergyMeter, analytic_energy, beside_paper, cost_summary, flops_of

CONF = OmegaConf.load(Path(__file__).resolve().parents[2] / "conf" / "cost" / "default.yaml")
TABLE = {
    "a100": {"peak_flops": 312e12, "usd_per_hour": 2.0, "tdp_watts": 400},
    "h100": {"peak_flops": 1e15, "usd_per_hour": 4.0, "tdp_watts": 700},
    "cpu": {"usd_per_hour": 0.1, "tdp_watts": 20},
}


def test_linear_forward_flops_are_two_multiply_adds_per_weight_and_sample():
    torch.manual_seed(0)
    linear, x = nn.Linear(64, 32), torch.randn(8, 64)
    assert flops_of(lambda: linear(x)) == 2 * 8 * 64 * 32 == 32768


def test_linear_backward_costs_one_forward_per_gradient_it_computes():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    leaf = torch.randn(8, 64)  # no grad: backward computes the weight gradient only
    assert flops_of(lambda: linear(leaf).sum().backward()) == 2 * 32768
    needs_grad = torch.randn(8, 64, requires_grad=True)  # weight and input gradients: the usual 3x
    assert flops_of(lambda: linear(needs_grad).sum().backward()) == 3 * 32768


def test_cost_summary_arithmetic():
    cfg = CostConfig(TABLE, utilisation=0.5, pue=1.5, grid_kg_per_kwh=0.5)
    s = cost_summary(1e18, 1000, wall_seconds=7200, num_devices=2, device="cpu", energy_kwh=None, emissions_kg=None,
                     cfg=cfg)  # fmt: skip
    a100_hours = 1e18 / (312e12 * 0.5) / 3600  # 1.7806... h
    assert s["a100_days"] == pytest.approx(a100_hours / 24, rel=1e-12)
    assert s["a100_days"] == pytest.approx(0.0741927825, rel=1e-9)
    assert s["gpu_equivalent"]["a100"] == {"hours": pytest.approx(1.7806267806), "usd": pytest.approx(3.5612535613)}
    assert s["gpu_equivalent"]["h100"] == {"hours": pytest.approx(2000 / 3600), "usd": pytest.approx(2.2222222222)}
    assert set(s["gpu_equivalent"]) == {"a100", "h100"}  # the cpu row has no peak: not a GPU-time unit
    assert (s["flops_per_sample"], s["wall_hours"], s["device_hours"], s["usd"]) == (1e15, 2.0, 4.0, pytest.approx(0.4))
    # 4 device-hours x 20 W x PUE 1.5 = 0.12 kWh; x 0.5 kg/kWh = 0.06 kg
    assert (s["energy_kwh"], s["emissions_kg_co2"]) == (pytest.approx(0.12), pytest.approx(0.06))
    assert s["energy_source"] == "analytic"


def test_measured_energy_is_reported_as_given():
    cfg = CostConfig(TABLE)
    s = cost_summary(0.0, 0, 60, 1, "h100", energy_kwh=0.25, emissions_kg=0.01, cfg=cfg, energy_source="codecarbon")
    assert (s["energy_kwh"], s["emissions_kg_co2"], s["energy_source"]) == (0.25, 0.01, "codecarbon")
    assert s["flops_per_sample"] is None
    assert s["usd"] == pytest.approx(4.0 / 60)


def test_analytic_energy_is_hours_times_watts_times_pue():
    assert analytic_energy(10.0, 300.0, 1.2, 0.4) == (pytest.approx(3.6), pytest.approx(1.44))


def test_unknown_device_names_the_table():
    with pytest.raises(KeyError, match="device 'tpu' has no entry .*known: a100, cpu, h100"):
        cost_summary(1.0, 1, 1.0, 1, "tpu", None, None, CostConfig(TABLE))


def test_yaml_peaks_are_floats_and_paper_figures_are_the_papers():
    cfg = CostConfig(OmegaConf.to_container(CONF.devices))
    assert {k: d.peak_flops for k, d in cfg.gpus.items()} == {"a100": 312e12, "v100": 125e12, "h100": 989e12}
    assert OmegaConf.to_container(CONF.paper) == {
        "pixart_alpha": {"a100_days": 753, "usd": 28400},
        "sd_1_5": {"a100_days": 6250, "usd": 320000},
    }


def test_a_run_of_a_tenth_of_pixart_alpha_compute_is_beside_it_at_ratio_0_1():
    cfg = CostConfig(OmegaConf.to_container(CONF.devices), utilisation=CONF.utilisation)
    flops = 75.3 * 86400 * 312e12 * 0.4  # 75.3 A100-days at 40% of peak
    side = beside_paper(cost_summary(flops, 1, 1.0, 1, "cpu", 0.0, 0.0, cfg), CONF.paper)
    assert side["run"] == {"a100_days": pytest.approx(75.3), "usd": pytest.approx(75.3 * 24 * 1.79)}
    assert side["pixart_alpha"]["a100_days_ratio"] == pytest.approx(0.1)
    assert side["sd_1_5"]["a100_days_ratio"] == pytest.approx(75.3 / 6250)
    assert side["pixart_alpha"]["usd_ratio"] == pytest.approx(3234.888 / 28400)


class RaisingTracker:
    def __init__(self, **kwargs):
        raise RuntimeError("no RAPL")


class SilentTracker:
    """Starts and stops but never reports a reading."""

    def __init__(self, **kwargs):
        pass

    def start(self):
        pass

    def flush(self):
        pass

    def stop(self):
        pass


@pytest.mark.parametrize(
    ("tracker", "reason"), [(RaisingTracker, "RuntimeError: no RAPL"), (SilentTracker, "it reported None kWh, None kg")]
)
def test_energy_meter_falls_back_to_tdp_times_pue_with_one_warning(monkeypatch, caplog, tracker, reason):
    import codecarbon

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", tracker)
    meter = EnergyMeter(tdp_watts=300, pue=1.1, grid_kg_per_kwh=0.4, num_devices=2)
    with caplog.at_level(logging.WARNING, logger="pixart_lab.evaluation.cost"):
        meter.start()
        time.sleep(0.05)
        kwh, kg, source = meter.stop()
    hours = meter.elapsed_seconds() / 3600
    assert hours > 0.05 / 3600
    assert kwh == pytest.approx(hours * 2 * 300 * 1.1 / 1000)  # 2 devices x 300 W x PUE 1.1
    assert (kg, source) == (pytest.approx(kwh * 0.4), "analytic")
    assert [r.getMessage() for r in caplog.records] == [
        f"codecarbon could not measure this device ({reason}); energy from device-hours x TDP x PUE"
    ]


def test_codecarbon_measures_offline_without_writing_files(tmp_path, monkeypatch):
    def refuse(self, address):
        raise OSError(f"network is off in this test ({address})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.chdir(tmp_path)
    lock = Path("/tmp/.codecarbon.lock")
    lock_before = lock.exists()
    meter = EnergyMeter(tdp_watts=18, pue=1.1, grid_kg_per_kwh=CONF.grid_kg_per_kwh, country=CONF.country)
    meter.start()
    a = torch.randn(256, 256)
    for _ in range(50):
        a = (a @ a).tanh()
    kwh, kg, source = meter.stop()
    assert source == "codecarbon" and meter.fallback_reason is None
    assert kwh > 0
    assert kg / kwh == pytest.approx(CONF.grid_kg_per_kwh, rel=2e-3)  # the fallback intensity is codecarbon's own
    assert os.listdir(tmp_path) == []
    assert lock.exists() == lock_before
