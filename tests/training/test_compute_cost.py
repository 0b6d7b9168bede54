import csv
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch import nn

import pixart_lab.training.compute_cost as compute_cost
from pixart_lab.training.compute_cost import ComputeCost, batch_size_of, device_name

CONF = Path(__file__).resolve().parents[2] / "conf" / "cost" / "default.yaml"
# 16 -> 32 -> 8 MLP per sample: first layer forward 2*16*32 and weight gradient 2*16*32 (its input
# needs no gradient); second layer forward 2*32*8, weight and input gradients 2 * 2*32*8.
FLOPS_PER_SAMPLE = 1024 + 1024 + 512 + 1024


class TinyModule(L.LightningModule):
    """An MLP on dict batches; its own hooks do matmuls that are not forward+backward of training."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))

    def training_step(self, batch, batch_idx):
        return self.net(batch["latent_mean"]).pow(2).mean()

    def on_before_optimizer_step(self, optimizer):
        self.grad_probe = self.net[0].weight.grad @ self.net[0].weight.grad.T  # a grad-norm-like statistic

    def on_train_batch_end(self, outputs, batch, batch_idx):
        with torch.no_grad():
            self.net(batch["latent_mean"])  # an EMA-like extra forward

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        data = [{"latent_mean": torch.randn(16, generator=g)} for _ in range(64)]
        return torch.utils.data.DataLoader(data, batch_size=4)


def cost_callback(metrics_dir: Path | str = "metrics", **overrides) -> ComputeCost:
    cfg = OmegaConf.merge({"paths": {"metrics_dir": str(metrics_dir)}}, {"cost": OmegaConf.load(CONF)})
    return instantiate(cfg.cost, **{"measure_energy": False, "log_every_n_steps": 1, **overrides})


def fit(module, callbacks, max_steps, tmp_path, ckpt_path=None, **trainer_kwargs):
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks, default_root_dir=tmp_path,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, **trainer_kwargs,
    )  # fmt: skip
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer


def test_first_step_measures_forward_backward_flops_per_sample_and_logs_the_totals(tmp_path):
    cost = cost_callback()
    trainer = fit(TinyModule(), [cost], 3, tmp_path, logger=CSVLogger(tmp_path, name="run"), enable_checkpointing=False)
    assert cost.flops_per_sample == FLOPS_PER_SAMPLE
    assert cost.samples == 12
    assert trainer.callback_metrics["cost/flops"].item() == 12 * FLOPS_PER_SAMPLE
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("cost/samples")]
    assert [(r["step"], float(r["cost/samples"]), float(r["cost/flops"])) for r in rows] == [
        ("0", 4.0, 4 * FLOPS_PER_SAMPLE), ("1", 8.0, 8 * FLOPS_PER_SAMPLE), ("2", 12.0, 12 * FLOPS_PER_SAMPLE),
    ]  # fmt: skip
    summary = cost.summary()
    assert summary["a100_days"] == pytest.approx(12 * FLOPS_PER_SAMPLE / (312e12 * 0.4) / 86400)
    assert summary["device"] == "cpu" and summary["energy_source"] == "analytic"
    assert summary["energy_kwh"] == pytest.approx(summary["device_hours"] * 18 * 1.1 / 1000, rel=1e-3)
    assert summary["usd"] == pytest.approx(summary["device_hours"] * 0.085)
    assert summary["paper"]["pixart_alpha"]["a100_days_ratio"] == pytest.approx(summary["a100_days"] / 753)


def test_gradient_accumulation_divides_by_every_micro_batch_of_the_first_step(tmp_path):
    cost = cost_callback()
    fit(TinyModule(), [cost], 3, tmp_path, logger=False, enable_checkpointing=False, accumulate_grad_batches=2)
    assert (cost.flops_per_sample, cost.samples) == (FLOPS_PER_SAMPLE, 24)


def test_measuring_does_not_change_the_trained_weights(tmp_path):
    plain, measured = TinyModule(), TinyModule()
    fit(plain, [], 3, tmp_path / "a", logger=False, enable_checkpointing=False)
    fit(measured, [cost_callback()], 3, tmp_path / "b", logger=False, enable_checkpointing=False)
    for p, q in zip(plain.parameters(), measured.parameters()):
        assert torch.equal(p, q)


def test_resume_continues_samples_flops_and_wall_time_without_measuring_again(tmp_path, monkeypatch):
    first = cost_callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    fit(TinyModule(), [first, checkpoint], 2, tmp_path, logger=False)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]["ComputeCost"]
    assert (state["samples"], state["flops_per_sample"], state["energy_sources"]) == (8, FLOPS_PER_SAMPLE, ["analytic"])
    assert 0 < state["wall_seconds"] <= first.wall_seconds()

    def no_counting(**kwargs):
        raise AssertionError("FLOPs were measured again after resuming")

    monkeypatch.setattr(compute_cost, "FlopCounterMode", no_counting)
    resumed = cost_callback()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=2)
    fit(TinyModule(), [resumed, checkpoint], 4, tmp_path, logger=False, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert (resumed.samples, resumed.flops) == (16, 16 * FLOPS_PER_SAMPLE)
    assert resumed.wall_seconds() > state["wall_seconds"]
    summary = resumed.summary()
    assert summary["energy_kwh"] == pytest.approx(summary["device_hours"] * 18 * 1.1 / 1000, rel=1e-3)


class FakeTracker:
    """Stands in for codecarbon: hands 0.5 kWh / 0.1 kg to its output handlers on flush and stop."""

    calls: list[str] = []

    def __init__(self, output_handlers, **kwargs):
        self.handlers, self.kwargs = output_handlers, kwargs

    def start(self):
        FakeTracker.calls.append("start")

    def _report(self):
        total = type("Total", (), {"energy_consumed": 0.5, "emissions": 0.1})()
        for handler in self.handlers:
            handler.out(total, total)

    def flush(self):
        self._report()

    def stop(self):
        FakeTracker.calls.append("stop")
        self._report()


def test_energy_meter_runs_with_the_fit_and_is_offline(tmp_path, monkeypatch):
    import codecarbon

    FakeTracker.calls = []
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    cost = cost_callback(measure_energy=True)
    fit(TinyModule(), [cost], 2, tmp_path, logger=False, enable_checkpointing=False)
    assert FakeTracker.calls == ["start", "stop"]
    summary = cost.summary()
    assert (summary["energy_kwh"], summary["emissions_kg_co2"], summary["energy_source"]) == (0.5, 0.1, "codecarbon")


def test_batch_size_and_device_names(monkeypatch):
    assert batch_size_of({"latent_mean": torch.zeros(5, 4), "y": torch.zeros(7)}) == 5
    assert batch_size_of(({"x": torch.zeros(3, 2)}, 1), key="latent_mean") == 3
    with pytest.raises(ValueError, match="no 'latent_mean' key and no tensor in a batch of type list"):
        batch_size_of([1, 2])
    gpus = {"a100": None, "v100": None, "h100": None}
    assert device_name(torch.device("cpu"), gpus) == "cpu"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA A100-SXM4-80GB")
    assert device_name(torch.device("cuda", 0), gpus) == "a100"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "NVIDIA GeForce RTX 4090")
    assert device_name(torch.device("cuda", 0), gpus) == "gpu"


def finished_run(metrics_dir: Path, run: str, flops: float, usd: float = 0.5) -> None:
    cost = {"flops": flops, "samples": 100, "device_hours": 0.1, "usd": usd, "energy_kwh": 0.01, "emissions_kg_co2": 0.004}
    metrics_dir.mkdir(parents=True, exist_ok=True)
    (metrics_dir / f"{run}.json").write_text(json.dumps({"cost": cost}))


def test_a_flops_budget_stops_the_run_and_prior_runs_carry_the_curriculum_totals(tmp_path):
    finished_run(tmp_path / "metrics", "a", flops=2 * 4 * FLOPS_PER_SAMPLE)  # two steps of batch 4
    finished_run(tmp_path / "metrics", "b", flops=1 * 4 * FLOPS_PER_SAMPLE)
    cost = cost_callback(tmp_path / "metrics", prior_runs=["a"], budget_runs=["a", "b"])
    trainer = fit(TinyModule(), [cost], 100, tmp_path, logger=False, enable_checkpointing=False)
    assert trainer.global_step == 3 and cost.flops == 3 * 4 * FLOPS_PER_SAMPLE
    summary = cost.summary()
    assert summary["budget"] == {"runs": ["a", "b"], "flops": 12 * FLOPS_PER_SAMPLE}
    assert summary["curriculum"]["flops"] == 2 * 4 * FLOPS_PER_SAMPLE + cost.flops
    assert summary["curriculum"]["usd"] == pytest.approx(0.5 + summary["usd"])
    snapshot = cost.snapshot()
    assert snapshot["curriculum_samples"] == 100 + 12 and snapshot["samples"] == 12

    with pytest.raises(FileNotFoundError, match=r"cost.budget_runs: .*missing.json not found \(train run 'missing' first\)"):
        fit(TinyModule(), [cost_callback(tmp_path / "metrics", budget_runs=["missing"])], 1, tmp_path / "x", logger=False)


class Measurement(L.Callback):
    """Spends 1000 s of a fake clock inside ``excluded_from_cost`` after every step."""

    def __init__(self, clock):
        self.clock = clock

    def on_train_batch_end(self, trainer, *args):
        with compute_cost.excluded_from_cost(trainer):
            self.clock.now += 1000.0


def test_measurement_inside_the_fit_is_left_out_of_the_cost(tmp_path, monkeypatch):
    class Clock:
        now = 0.0

        def perf_counter(self):
            self.now += 0.001  # every reading advances a little: training time
            return self.now

    clock = Clock()
    monkeypatch.setattr(compute_cost, "time", clock)
    cost = cost_callback()
    fit(TinyModule(), [cost, Measurement(clock)], 3, tmp_path, logger=False, enable_checkpointing=False)
    assert 0 < cost.wall_seconds() < 1.0  # 3000 s of measurement excluded, the training milliseconds kept
    assert cost.summary()["energy_kwh"] < 1e-4
