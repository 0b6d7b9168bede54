"""What a training run cost, on the axes of PixArt-alpha's Fig. 2 / Table 2: FLOPs, A100-days, dollars, CO2.

Compute converts to GPU time as ``hours = FLOPs / (peak FLOP/s x utilisation) / 3600``; one A100-day
is 24 such A100-hours. Dollars are GPU-hours x an hourly price. Energy is measured by codecarbon's
offline tracker where it can, else estimated as ``kWh = device-hours x TDP x PUE / 1000``; emissions
are ``kg = kWh x grid intensity``. Every price, peak, TDP and reference figure comes from
``conf/cost/``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)

REFERENCE_GPU = "a100"  # the unit of "A100-days", as in the paper


def flops_of(fn: Callable[[], Any]) -> int:
    """FLOPs that ``torch.utils.flop_counter`` counts while ``fn()`` runs (matmuls, convolutions, attention)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


@dataclass
class Device:
    """One row of the price table. ``peak_flops`` is None for devices not used as a GPU-time unit (cpu)."""

    tdp_watts: float
    usd_per_hour: float | None = None
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        # YAML 1.1 reads 312e12 (no dot, no sign) as a string; accept it rather than fail at the end of a run.
        self.tdp_watts = float(self.tdp_watts)
        self.usd_per_hour = None if self.usd_per_hour is None else float(self.usd_per_hour)
        self.peak_flops = None if self.peak_flops is None else float(self.peak_flops)


@dataclass
class CostConfig:
    """Price table (name -> ``Device`` or its fields), assumed utilisation, PUE and fallback grid intensity."""

    devices: Mapping[str, Device | Mapping[str, Any]]
    utilisation: float = 0.4
    pue: float = 1.1
    grid_kg_per_kwh: float = 0.369
    _devices: dict[str, Device] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._devices = {k: v if isinstance(v, Device) else Device(**v) for k, v in self.devices.items()}
        if REFERENCE_GPU not in self._devices or self._devices[REFERENCE_GPU].peak_flops is None:
            found = ", ".join(sorted(self._devices))
            raise ValueError(f"cost devices need an '{REFERENCE_GPU}' entry with peak_flops (found: {found})")

    def device(self, name: str) -> Device:
        """The table row of ``name``; a clear error when the table has none."""
        if name not in self._devices:
            known = ", ".join(sorted(self._devices))
            raise KeyError(f"device '{name}' has no entry in the cost devices table (known: {known})")
        return self._devices[name]

    @property
    def gpus(self) -> dict[str, Device]:
        """The rows with a peak FLOP/s: the GPUs a run's compute is converted to."""
        return {k: d for k, d in self._devices.items() if d.peak_flops is not None}


def gpu_hours(flops: float, peak_flops: float, utilisation: float) -> float:
    """Hours one GPU of ``peak_flops`` needs for ``flops`` at ``utilisation`` of its peak."""
    return flops / (peak_flops * utilisation) / 3600.0


def a100_days(flops: float, cfg: CostConfig) -> float:
    """``flops`` in A100-days at the configured utilisation."""
    return gpu_hours(flops, cfg.device(REFERENCE_GPU).peak_flops, cfg.utilisation) / 24.0


def analytic_energy(device_hours: float, tdp_watts: float, pue: float, grid_kg_per_kwh: float) -> tuple[float, float]:
    """``(kWh, kg CO2eq)`` of ``device_hours`` at ``tdp_watts`` in a data centre of ``pue``."""
    kwh = device_hours * tdp_watts * pue / 1000.0
    return kwh, kwh * grid_kg_per_kwh


def _usd(hours: float, usd_per_hour: float | None) -> float | None:
    return None if usd_per_hour is None else hours * usd_per_hour


def cost_summary(
    flops: float,
    samples: int,
    wall_seconds: float,
    num_devices: int,
    device: str,
    energy_kwh: float | None,
    emissions_kg: float | None,
    cfg: CostConfig,
    energy_source: str = "codecarbon",
) -> dict:
    """JSON-ready compute, GPU-time equivalents, dollars, energy and emissions of one run.

    ``usd`` is what the run itself cost (its device-hours at ``device``'s price); ``gpu_equivalent``
    is what its FLOPs would cost on each GPU of the table. Without ``energy_kwh`` the energy is
    estimated from device-hours x TDP x PUE and ``energy_source`` is ``"analytic"``.
    """
    wall_hours = wall_seconds / 3600.0
    device_hours = wall_hours * num_devices
    row = cfg.device(device)
    if energy_kwh is None:
        energy_kwh, emissions_kg = analytic_energy(device_hours, row.tdp_watts, cfg.pue, cfg.grid_kg_per_kwh)
        energy_source = "analytic"
    equivalent = {}
    for name, gpu in cfg.gpus.items():
        hours = gpu_hours(flops, gpu.peak_flops, cfg.utilisation)
        equivalent[name] = {"hours": hours, "usd": _usd(hours, gpu.usd_per_hour)}
    return {
        "flops": float(flops),
        "flops_per_sample": float(flops) / samples if samples else None,
        "samples": int(samples),
        "device": device,
        "num_devices": int(num_devices),
        "wall_hours": wall_hours,
        "device_hours": device_hours,
        "usd": _usd(device_hours, row.usd_per_hour),
        "assumed_utilisation": cfg.utilisation,
        "a100_days": a100_days(flops, cfg),
        "gpu_equivalent": equivalent,
        "energy_kwh": energy_kwh,
        "emissions_kg_co2": emissions_kg,
        "energy_source": energy_source,
    }


def beside_paper(summary: Mapping[str, Any], paper: Mapping[str, Mapping[str, float]]) -> dict:
    """The run's A100-days and A100-equivalent dollars next to each reference (e.g. PixArt-alpha, SD 1.5).

    The run's ``usd`` here is its A100-equivalent price, the basis of the paper's dollar figures,
    not what the run itself cost on its own device (``summary["usd"]``).
    """
    run = {"a100_days": summary["a100_days"], "usd": summary["gpu_equivalent"][REFERENCE_GPU]["usd"]}
    out: dict[str, dict] = {"run": run}
    for name, ref in paper.items():
        days, usd = float(ref["a100_days"]), float(ref["usd"])
        out[name] = {
            "a100_days": days,
            "usd": usd,
            "a100_days_ratio": run["a100_days"] / days,
            "usd_ratio": None if run["usd"] is None else run["usd"] / usd,
        }
    return out


class _LastTotal:
    """A codecarbon output handler that keeps the latest cumulative reading (given on flush and stop)."""

    def __init__(self) -> None:
        self.total = None

    def out(self, total, delta) -> None:
        self.total = total

    def live_out(self, total, delta) -> None:
        self.total = total

    def task_out(self, data, experiment_name) -> None:
        pass

    def exit(self) -> None:
        pass


class EnergyMeter:
    """Energy and emissions of a run: codecarbon's offline tracker, else device-hours x TDP x PUE.

    codecarbon runs without network (offline tracker, no output methods, no lock file, no CSV).
    It falls back to ``analytic_energy`` when it cannot be built, started or stopped, or reports no
    energy; the reason is logged once as a warning.
    """

    def __init__(
        self,
        tdp_watts: float,
        pue: float,
        grid_kg_per_kwh: float,
        num_devices: int = 1,
        country: str = "USA",
        measure_power_secs: float = 15.0,
        tracking_mode: str = "process",
        log_level: str = "error",
    ):
        self.tdp_watts, self.pue, self.grid_kg_per_kwh, self.num_devices = tdp_watts, pue, grid_kg_per_kwh, num_devices
        self.country, self.measure_power_secs, self.tracking_mode, self.log_level = (
            country, measure_power_secs, tracking_mode, log_level,
        )  # fmt: skip
        self._tracker = None
        self._output = _LastTotal()
        self._started: float | None = None
        self._stopped: float | None = None
        self.fallback_reason: str | None = None

    def start(self) -> None:
        """Start timing and, where it works, codecarbon's tracker."""
        self._started, self._stopped, self._output.total = time.perf_counter(), None, None
        try:
            from codecarbon import OfflineEmissionsTracker

            # codecarbon logs its first lines before it applies its own log_level.
            logging.getLogger("codecarbon").setLevel(self.log_level.upper())
            self._tracker = OfflineEmissionsTracker(
                country_iso_code=self.country,
                measure_power_secs=self.measure_power_secs,
                tracking_mode=self.tracking_mode,
                pue=self.pue,
                log_level=self.log_level,
                output_methods=[],  # no emissions.csv, no API (save_to_file=False, without its deprecation warning)
                output_handlers=[self._output],
                emissions_endpoint=None,
                allow_multiple_runs=True,  # False would write /tmp/.codecarbon.lock and take over SIGINT/SIGTERM
            )
            self._tracker.start()
        except Exception as error:  # any failure of the tracker means "estimate instead", never a failed run
            self._give_up(f"{type(error).__name__}: {error}")

    def elapsed_seconds(self) -> float:
        """Seconds since ``start()`` (until ``stop()`` once stopped)."""
        if self._started is None:
            return 0.0
        return (self._stopped or time.perf_counter()) - self._started

    def read(self) -> tuple[float, float, str]:
        """``(kWh, kg CO2eq, source)`` since ``start()``, without stopping."""
        if self._tracker is not None:
            try:
                self._tracker.flush()
            except Exception as error:
                self._give_up(f"{type(error).__name__}: {error}")
        return self._reading(final=False)

    def stop(self) -> tuple[float, float, str]:
        """Stop and return ``(kWh, kg CO2eq, source)`` since ``start()``; source is codecarbon or analytic."""
        if self._tracker is not None:
            try:
                self._tracker.stop()
            except Exception as error:
                self._give_up(f"{type(error).__name__}: {error}")
        self._stopped = time.perf_counter()
        reading = self._reading(final=True)
        self._tracker = None
        return reading

    def _reading(self, final: bool) -> tuple[float, float, str]:
        total = self._output.total if self._tracker is not None else None
        kwh, kg = getattr(total, "energy_consumed", None), getattr(total, "emissions", None)
        if kwh and kg and kwh > 0 and kg > 0:
            return float(kwh), float(kg), "codecarbon"
        if self._tracker is not None and final:  # early mid-run readings may still be zero
            self._warn(f"it reported {kwh!r} kWh, {kg!r} kg")
        device_hours = self.elapsed_seconds() / 3600.0 * self.num_devices
        return (*analytic_energy(device_hours, self.tdp_watts, self.pue, self.grid_kg_per_kwh), "analytic")

    def _give_up(self, reason: str) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            try:
                tracker.stop()  # its background threads must not outlive the fallback
            except Exception:
                pass
        self._warn(reason)

    def _warn(self, reason: str) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = reason
            log.warning(f"codecarbon could not measure this device ({reason}); energy from device-hours x TDP x PUE")
