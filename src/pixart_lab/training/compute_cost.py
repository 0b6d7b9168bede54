"""A callback that accounts a training stage's compute, time, dollars, energy and CO2 (``conf/cost/``).

FLOPs per sample are counted once, on the run's first optimiser step, by ``torch.utils.flop_counter``
(matmuls, convolutions, attention) from the start of each batch (each micro-batch under gradient
accumulation) until its gradients are ready: forward and backward only. The optimiser update,
gradient clipping, the EMA and the module's other hooks are excluded, as in the usual ``6 N D``
accounting; activation recomputation (gradient checkpointing) is counted, since it is real work. The
measurement reuses the step that trains anyway: no extra forward pass, no change to the numbers.

Measurement inside the fit (sample grids, periodic evaluation) runs under :func:`excluded_from_cost`,
so wall time, dollars and energy are the training's alone. A curriculum stage can carry the totals of
the stages before it (``prior_runs``), and a run can stop at a FLOPs budget equal to other runs'
totals (``budget_runs``): how the SD-class baseline gets the PixArt curriculum's compute.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.flop_counter import FlopCounterMode

from pixart_lab.evaluation.cost import CostConfig, EnergyMeter, a100_days, analytic_energy, beside_paper, cost_summary

log = logging.getLogger(__name__)


def batch_size_of(batch: Any, key: str | None = "latent_mean") -> int:
    """Samples in ``batch``: ``batch[key]``'s first dimension, else that of the first tensor found."""
    if isinstance(batch, Mapping) and key in batch:
        return int(batch[key].shape[0])
    stack = [batch]
    while stack:
        item = stack.pop(0)
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return int(item.shape[0])
        if isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    kind = type(batch).__name__
    raise ValueError(f"cannot tell the batch size: no '{key}' key and no tensor in a batch of type {kind}")


def device_name(root_device: torch.device, gpus: Mapping[str, Any]) -> str:
    """``cpu``, the key of ``gpus`` in the CUDA device's name (``NVIDIA A100-SXM4-80GB``: ``a100``), else ``gpu``."""
    if root_device.type == "cpu":
        return "cpu"
    if root_device.type == "cuda":
        name = torch.cuda.get_device_name(root_device).lower()
        return next((key for key in gpus if key.lower() in name), "gpu")
    return "gpu"


class ComputeCost(L.Callback):
    """Counts samples, FLOPs and wall time of ``trainer.fit`` (across resumes), logs them as ``cost/*``
    every ``log_every_n_steps`` steps and meters energy; ``summary()`` is the stage's cost report.

    ``devices``, ``paper``, ``utilisation``, ``pue`` and ``grid_kg_per_kwh`` are those of
    ``conf/cost/default.yaml``; ``device`` names the row of ``devices`` the run is priced at (None:
    from the trainer's device). ``measure_energy=False`` skips codecarbon (energy from TDP x PUE).
    """

    def __init__(
        self,
        devices: Mapping[str, Mapping[str, Any]],
        paper: Mapping[str, Mapping[str, float]],
        utilisation: float = 0.4,
        pue: float = 1.1,
        grid_kg_per_kwh: float = 0.369,
        device: str | None = None,
        batch_size_key: str = "latent_mean",
        log_every_n_steps: int = 10,
        measure_energy: bool = True,
        country: str = "USA",
        measure_power_secs: float = 15.0,
        tracking_mode: str = "process",
        metrics_dir: str | Path = "metrics",
        prior_runs: Sequence[str] = (),
        budget_runs: Sequence[str] = (),
    ):
        self.cfg = CostConfig(
            {k: dict(v) for k, v in devices.items()}, utilisation=utilisation, pue=pue, grid_kg_per_kwh=grid_kg_per_kwh
        )
        self.paper = {k: dict(v) for k, v in paper.items()}
        self.device, self.batch_size_key, self.log_every_n_steps = device, batch_size_key, log_every_n_steps
        self.measure_energy, self.country = measure_energy, country
        self.measure_power_secs, self.tracking_mode = measure_power_secs, tracking_mode
        if device is not None:
            self.cfg.device(device)  # an unknown name fails here, not after training
        self.metrics_dir, self.prior_runs, self.budget_runs = Path(metrics_dir), list(prior_runs), list(budget_runs)
        self.prior: dict[str, float] | None = None  # totals of prior_runs, read at the start
        self.budget_flops: float | None = None
        # Carried in checkpoints: totals of earlier sessions of this run.
        self.samples = 0
        self.flops_per_sample: float | None = None
        self.wall_seconds_before = 0.0
        self.energy_kwh_before = 0.0
        self.emissions_kg_before = 0.0
        self.energy_sources: set[str] = set()
        # This session only.
        self.num_devices = 1
        self._session_start: float | None = None
        self._meter: EnergyMeter | None = None
        self._counter: FlopCounterMode | None = None
        self._counted_flops, self._counted_samples = 0, 0
        self._excluded_seconds, self._excluded_kwh, self._excluded_kg = 0.0, 0.0, 0.0

    # ---- quantities -------------------------------------------------------------------------
    @property
    def flops(self) -> float:
        """Forward+backward FLOPs of all samples trained so far (0 until measured)."""
        return (self.flops_per_sample or 0.0) * self.samples

    def _session_seconds(self) -> float:
        """Training seconds of this session: since the start, less the excluded measurement time."""
        if self._session_start is None:
            return 0.0
        return time.perf_counter() - self._session_start - self._excluded_seconds

    def wall_seconds(self) -> float:
        """Training wall time of this run, earlier sessions included."""
        return self.wall_seconds_before + self._session_seconds()

    @contextmanager
    def excluded(self) -> Iterator[None]:
        """Leave the block's wall time and energy out of the run's cost (sample grids, evaluation)."""
        if self._session_start is None:
            yield
            return
        start, before = time.perf_counter(), self._meter.read() if self._meter is not None else None
        try:
            yield
        finally:
            self._excluded_seconds += time.perf_counter() - start
            if before is not None:
                after = self._meter.read()
                self._excluded_kwh += max(0.0, after[0] - before[0])
                self._excluded_kg += max(0.0, after[1] - before[1])

    def _energy(self, final: bool = False, session_seconds: float | None = None) -> tuple[float, float, str]:
        """Run totals ``(kWh, kg CO2eq, source)``: earlier sessions plus this one so far (``final``: stop
        the meter); an analytic estimate spans ``session_seconds`` (default: read the clock now)."""
        if session_seconds is None:
            session_seconds = self._session_seconds()
        kwh, kg, sources = self.energy_kwh_before, self.emissions_kg_before, set(self.energy_sources)
        part = None
        if self._meter is not None:
            kwh_part, kg_part, source = self._meter.stop() if final else self._meter.read()
            if source == "analytic":  # the meter's estimate spans its whole session, measurement included
                kwh_part, kg_part = self._analytic_energy(session_seconds)
            else:
                kwh_part, kg_part = max(0.0, kwh_part - self._excluded_kwh), max(0.0, kg_part - self._excluded_kg)
            part = (kwh_part, kg_part, source)
        elif self._session_start is not None:
            part = (*self._analytic_energy(session_seconds), "analytic")
        if part is not None:
            kwh, kg = kwh + part[0], kg + part[1]
            sources.add(part[2])
        return kwh, kg, "+".join(sorted(sources)) or "analytic"

    def _analytic_energy(self, session_seconds: float) -> tuple[float, float]:
        hours = session_seconds / 3600.0 * self.num_devices
        row = self.cfg.device(self._device())
        return analytic_energy(hours, row.tdp_watts, self.cfg.pue, self.cfg.grid_kg_per_kwh)

    def _device(self) -> str:
        if self.device is None:
            return device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu"), self.cfg.gpus)
        return self.device

    def summary(self) -> dict:
        """``cost_summary`` of the run so far, with ``paper``: the run beside the reference figures."""
        session_seconds = self._session_seconds()  # one clock reading for the time and the energy
        energy_kwh, emissions_kg, source = self._energy(session_seconds=session_seconds)
        report = cost_summary(
            self.flops, self.samples, self.wall_seconds_before + session_seconds, self.num_devices, self._device(),
            energy_kwh, emissions_kg, self.cfg, energy_source=source,
        )  # fmt: skip
        report = {**report, "paper": beside_paper(report, self.paper)}
        if self.prior_runs:
            report["curriculum"] = {"runs": [*self.prior_runs, "(this run)"], **self.curriculum(report)}
        if self.budget_flops is not None:
            report["budget"] = {"runs": self.budget_runs, "flops": self.budget_flops}
        return report

    def snapshot(self) -> dict[str, float]:
        """This run's totals so far, and the curriculum's (``prior_runs`` + this run) under ``curriculum_``."""
        session_seconds = self._session_seconds()
        energy_kwh, emissions_kg, _ = self._energy(session_seconds=session_seconds)
        hours = (self.wall_seconds_before + session_seconds) / 3600.0 * self.num_devices
        price = self.cfg.device(self._device()).usd_per_hour
        own = {
            "flops": float(self.flops),
            "samples": float(self.samples),
            "device_hours": hours,
            "usd": hours * price if price is not None else float("nan"),
            "energy_kwh": energy_kwh,
            "emissions_kg_co2": emissions_kg,
        }
        return {**own, **{f"curriculum_{k}": v for k, v in self.curriculum(own).items()}}

    def curriculum(self, own: Mapping[str, Any]) -> dict[str, float]:
        """``own`` totals plus those of ``prior_runs``."""
        prior = self.prior or {}
        return {k: float(own[k] or 0.0) + prior.get(k, 0.0) for k in RUN_TOTALS}

    def metrics(self) -> dict[str, float]:
        """The ``cost/*`` values logged with the step."""
        wall_hours = self.wall_seconds() / 3600.0
        return {
            "cost/flops": float(self.flops),
            "cost/samples": float(self.samples),
            "cost/wall_hours": wall_hours,
            "cost/device_hours": wall_hours * self.num_devices,
            "cost/a100_days": a100_days(self.flops, self.cfg),
        }

    # ---- hooks ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Read before any training: a missing prior or budget run fails now, not at the end.
        self.prior = run_totals(self.metrics_dir, self.prior_runs, "cost.prior_runs")
        if self.budget_runs:
            self.budget_flops = run_totals(self.metrics_dir, self.budget_runs, "cost.budget_runs")["flops"]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.num_devices = trainer.world_size
        if self.device is None:
            self.device = device_name(trainer.strategy.root_device, self.cfg.gpus)
        row = self.cfg.device(self.device)
        self._session_start = time.perf_counter()
        # One meter for the machine: rank 0's tracker already sees every visible GPU.
        if self.measure_energy and trainer.is_global_zero:
            self._meter = EnergyMeter(
                row.tdp_watts, self.cfg.pue, self.cfg.grid_kg_per_kwh, self.num_devices,
                self.country, self.measure_power_secs, self.tracking_mode,
            )  # fmt: skip
            self._meter.start()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.flops_per_sample is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()
            self._counted_samples += batch_size_of(batch, self.batch_size_key)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        # Runs after backward and before the module's own hook, clipping, the update and the EMA.
        if self._counter is not None:
            self._pause_counter()
            self.flops_per_sample = self._counted_flops / self._counted_samples

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Gradient accumulation: a micro-batch without optimiser step; pause before the module's own hook.
        if self._counter is not None:
            self._pause_counter()
        self.samples += batch_size_of(batch, self.batch_size_key) * trainer.world_size
        step = trainer.global_step
        if step % self.log_every_n_steps == 0 or step == trainer.max_steps:
            pl_module.log_dict(self.metrics())
        if self.budget_flops is not None and self.flops >= self.budget_flops and not trainer.should_stop:
            log.info("step %d: %.3g FLOPs reach the budget of %s (%.3g); stopping", step, self.flops, self.budget_runs, self.budget_flops)
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._counter is not None:  # no optimiser step ran: nothing measured
            self._pause_counter()
        self._counted_flops, self._counted_samples = 0, 0
        session_seconds = self._session_seconds()  # one clock reading for the time and the energy
        self.energy_kwh_before, self.emissions_kg_before, source = self._energy(final=True, session_seconds=session_seconds)
        self.energy_sources = set(source.split("+"))
        self.wall_seconds_before += session_seconds
        self._session_start, self._meter = None, None
        self._excluded_seconds, self._excluded_kwh, self._excluded_kg = 0.0, 0.0, 0.0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Leave no flop counter on the dispatch stack and no codecarbon thread behind a failed fit.
        self.on_train_end(trainer, pl_module)

    def _pause_counter(self) -> None:
        counter, self._counter = self._counter, None
        counter.__exit__(None, None, None)
        self._counted_flops += counter.get_total_flops()

    # ---- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        session_seconds = self._session_seconds()
        energy_kwh, emissions_kg, source = self._energy(session_seconds=session_seconds)
        return {
            "samples": self.samples,
            "flops_per_sample": self.flops_per_sample,
            "wall_seconds": self.wall_seconds_before + session_seconds,
            "energy_kwh": energy_kwh,
            "emissions_kg": emissions_kg,
            "energy_sources": source.split("+"),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.samples = int(state_dict["samples"])
        self.flops_per_sample = state_dict["flops_per_sample"]
        self.wall_seconds_before = float(state_dict["wall_seconds"])
        self.energy_kwh_before = float(state_dict["energy_kwh"])
        self.emissions_kg_before = float(state_dict["emissions_kg"])
        self.energy_sources = set(state_dict["energy_sources"])


RUN_TOTALS = ("flops", "samples", "device_hours", "usd", "energy_kwh", "emissions_kg_co2")


def run_totals(metrics_dir: str | Path, runs: Sequence[str], what: str = "runs") -> dict[str, float]:
    """The summed ``RUN_TOTALS`` of finished runs, read from ``metrics_dir/<run>.json["cost"]``."""
    totals = dict.fromkeys(RUN_TOTALS, 0.0)
    for run in runs:
        path = Path(metrics_dir) / f"{run}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{what}: {path} not found (train run '{run}' first)")
        cost = json.loads(path.read_text()).get("cost")
        if not cost:
            raise KeyError(f"{what}: {path} has no 'cost' entry (it was not trained with the cost callback)")
        for key in RUN_TOTALS:
            totals[key] += float(cost.get(key) or 0.0)
    return totals


def excluded_from_cost(trainer: L.Trainer):
    """A context that leaves its block out of the run's cost (a no-op without a ComputeCost callback)."""
    cost = next((c for c in trainer.callbacks if isinstance(c, ComputeCost)), None)
    return cost.excluded() if cost is not None else nullcontext()
