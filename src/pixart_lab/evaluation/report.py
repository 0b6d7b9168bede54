"""PixArt against the SD-class baseline: quality against training compute, and the headline ratio.

PixArt-alpha's claim (abstract, Fig. 2) is that it reaches SD-class quality with ~11% of SD 1.5's
training compute (675-753 vs 6,250 A100-days). Here both models log their periodic evaluations
(``plots/<run>_eval.csv``: FID, CLIP score and compositional accuracy beside FLOPs, $ and CO2 so
far); the curriculum's stages are chained into one curve, and the headline ratio is

    compute PixArt needed to first reach the baseline's final quality / the baseline's compute,

read off the curve by linear interpolation between evaluations (None when PixArt never gets there).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # no pyplot: importing this module never switches the backend

from pixart_lab.training.history import write_csv
from pixart_lab.utils.io import atomic_save

# metric -> (label, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "fid": ("FID (lower is better)", True),
    "clip_score": ("CLIP score", False),
    "compositional": ("compositional accuracy", False),
}
# x axis column -> label
COMPUTE_AXES: dict[str, str] = {
    "curriculum_flops": "training FLOPs",
    "curriculum_usd": "training cost on this device ($)",
    "curriculum_emissions_kg_co2": "training emissions (kg CO2eq)",
}


def read_rows(path: str | Path) -> list[dict[str, float]]:
    """A CSV's rows as floats (empty cells dropped); a clear error when the run has not been trained."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no periodic evaluation (train that run with periodic_eval first)")
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


@dataclass
class Curve:
    """One model's quality-vs-compute points, in order; ``boundaries`` are the stage ends (compute)."""

    name: str
    points: list[dict[str, Any]]
    boundaries: list[dict[str, Any]] = field(default_factory=list)

    def series(self, x: str, y: str) -> tuple[list[float], list[float]]:
        pts = [p for p in self.points if x in p and y in p and math.isfinite(p[y])]
        return [p[x] for p in pts], [p[y] for p in pts]

    def final(self, y: str) -> float | None:
        values = self.series("step", y)[1]
        return values[-1] if values else None


def load_curve(name: str, runs: Sequence[str], plots_dir: str | Path) -> Curve:
    """The periodic evaluations of ``runs`` chained in order (curriculum stages: one curve)."""
    points, boundaries = [], []
    for run in runs:
        rows = read_rows(Path(plots_dir) / f"{run}_eval.csv")
        points.extend({**row, "run": run} for row in rows)
        if rows:
            boundaries.append({"run": run, **{k: rows[-1].get(k, math.nan) for k in COMPUTE_AXES}})
    return Curve(name, points, boundaries[:-1])


def compute_to_reach(xs: Sequence[float], ys: Sequence[float], target: float, lower_is_better: bool) -> float | None:
    """The first compute at which ``ys`` reaches ``target``, linearly interpolated between points."""
    reached = (lambda y: y <= target) if lower_is_better else (lambda y: y >= target)
    for i, (x, y) in enumerate(zip(xs, ys)):
        if reached(y):
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0)
    return None


def headline(pixart: Curve, baseline: Curve, metric: str = "fid", x: str = "curriculum_flops") -> dict[str, Any]:
    """PixArt's compute to reach the baseline's final ``metric``, as a fraction of the baseline's compute."""
    lower = METRICS[metric][1]
    base_x, base_y = baseline.series(x, metric)
    pix_x, pix_y = pixart.series(x, metric)
    if not base_y or not pix_y:
        return {"metric": metric, "ratio": None, "reason": f"no {metric} in the periodic evaluations of {'the baseline' if not base_y else 'PixArt'}"}
    target, budget = base_y[-1], base_x[-1]
    needed = compute_to_reach(pix_x, pix_y, target, lower)
    best = min(pix_y) if lower else max(pix_y)
    return {
        "metric": metric,
        "baseline_final": target,
        "baseline_compute": budget,
        "pixart_final": pix_y[-1],
        "pixart_best": best,
        "pixart_compute": pix_x[-1],
        "pixart_compute_to_reach": needed,
        "ratio": None if needed is None else needed / budget,
    }


def plot_quality_vs_compute(pixart: Curve, baseline: Curve, path: str | Path, metrics: Sequence[str] = tuple(METRICS)) -> Path:
    """Rows: metrics; columns: FLOPs, $, CO2. PixArt's stage ends dotted; a marker on every evaluation."""
    metrics = [m for m in metrics if pixart.series("step", m)[1] or baseline.series("step", m)[1]]
    fig = Figure(figsize=(5.2 * len(COMPUTE_AXES), 3.4 * len(metrics)))
    axes = fig.subplots(len(metrics), len(COMPUTE_AXES), squeeze=False)
    for row, metric in zip(axes, metrics):
        for ax, (x, xlabel) in zip(row, COMPUTE_AXES.items()):
            for curve, colour in ((pixart, "tab:blue"), (baseline, "tab:orange")):
                xs, ys = curve.series(x, metric)
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=curve.name)
            for boundary in pixart.boundaries:
                if math.isfinite(boundary.get(x, math.nan)):
                    ax.axvline(boundary[x], color="tab:blue", linestyle=":", alpha=0.6)
                    ax.annotate(f"end of {boundary['run']}", (boundary[x], 1), xycoords=("data", "axes fraction"),
                                rotation=90, va="top", ha="right", fontsize=7, color="tab:blue")  # fmt: skip
            ax.set(xlabel=xlabel, ylabel=METRICS[metric][0])
            ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Quality against training compute (periodic evaluations of the EMA weights)")
    fig.tight_layout()
    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return path


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run the stage that writes it first)")
    return json.loads(path.read_text())


def final_table(runs: Mapping[str, str], metrics_dir: str | Path, a100_days_per_flop: float) -> list[dict[str, Any]]:
    """One row per run (label -> run name): its full evaluation (``eval_<run>.json``) and the training
    compute behind it, curriculum stages counted up to and including the run."""
    rows = []
    for label, run in runs.items():
        trained, evaluated = read_json(Path(metrics_dir) / f"{run}.json"), read_json(Path(metrics_dir) / f"eval_{run}.json")
        cost = trained["cost"]
        total = cost.get("curriculum", cost)
        rows.append({
            "model": label,
            "parameters": trained.get("parameters"),
            "flops_per_sample": cost.get("flops_per_sample"),
            "training_flops": total["flops"],
            "a100_days": total["flops"] * a100_days_per_flop,
            "usd": total["usd"],
            "emissions_kg_co2": total["emissions_kg_co2"],
            "fid": evaluated["fid"]["generated"],
            "fid_floor": evaluated["fid"]["real_vs_real_floor"],
            "clip_score": evaluated.get("clip_score", {}).get("generated"),
            "compositional": (evaluated.get("compositional") or {}).get("overall"),
            "size": "x".join(map(str, evaluated.get("size", []))),
        })  # fmt: skip
    return rows


def ceiling_row(metrics_dir: str | Path) -> dict[str, Any] | None:
    """The final table's reference row: held-out real images through the VAE (``ceiling.json``), if measured."""
    path = Path(metrics_dir) / "ceiling.json"
    if not path.is_file():
        return None
    ceiling = json.loads(path.read_text())
    return {
        "model": "real images through the VAE (ceiling)",
        "fid": ceiling["fid"]["round_trip"],
        "fid_floor": ceiling["fid"]["real_vs_real_floor"],
        "clip_score": ceiling["clip_score"]["round_trip"],
        "compositional": ceiling["compositional"]["overall"],
    }


def write_curve_csv(curve: Curve, path: str | Path) -> None:
    """The curve as one CSV (``run`` column marks the stage), the file ``dvc plots`` draws."""
    columns = ["run", "step", *COMPUTE_AXES, *METRICS]
    write_csv(path, curve.points, columns)


def headline_sentence(result: Mapping[str, Any]) -> str:
    """One line saying what the headline ratio of ``result`` (from :func:`headline`) measured."""
    label = METRICS[result["metric"]][0].split(" (")[0]
    if "baseline_final" not in result:
        return f"No {label} to compare: {result.get('reason', 'no evaluations')}."
    if result.get("ratio") is None:
        return (f"PixArt did not reach the baseline's final {label} ({result.get('baseline_final', math.nan):.3g}) "
                f"within its curriculum (its best: {result.get('pixart_best', math.nan):.3g}).")  # fmt: skip
    return (f"PixArt reached the baseline's final {label} ({result['baseline_final']:.3g}) after "
            f"{result['pixart_compute_to_reach']:.3g} training FLOPs: {100 * result['ratio']:.1f}% of the "
            f"baseline's {result['baseline_compute']:.3g}.")  # fmt: skip


@dataclass
class Comparison:
    """Everything the report shows: both curves, the headline ratios, the final table, the paper's figures."""

    pixart: Curve
    baseline: Curve
    headlines: dict[str, dict[str, Any]]
    final: list[dict[str, Any]]
    paper: dict[str, dict[str, Any]]
    ceiling: dict[str, Any] | None = None

    @property
    def pixart_total(self) -> dict[str, Any]:
        return self.final[-2]

    @property
    def baseline_total(self) -> dict[str, Any]:
        return self.final[-1]

    def sentences(self) -> list[str]:
        return [headline_sentence(r) for r in self.headlines.values()]

    def paper_ratio(self) -> float:
        return self.paper["pixart_alpha"]["a100_days"] / self.paper["sd_1_5"]["a100_days"]

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures (``metrics/report.json``)."""
        parity = {k: {"pixart": self.pixart_total[k], "baseline": self.baseline_total[k]} for k in ("parameters", "flops_per_sample", "training_flops")}
        return {
            "headline": self.headlines,
            "compute_ratio_to_reach_baseline_fid": self.headlines["fid"].get("ratio"),
            "paper_compute_ratio": self.paper_ratio(),
            "parity": parity,
            "final": self.final,
            "ceiling": self.ceiling,
            "paper": self.paper,
        }


def compare(
    pixart_runs: Sequence[str],
    baseline_run: str,
    plots_dir: str | Path,
    metrics_dir: str | Path,
    labels: Mapping[str, str],
    a100_days_per_flop: float,
    paper: Mapping[str, Mapping[str, Any]],
) -> Comparison:
    """Read both models' curves and final figures; compute the headline ratio of every metric."""
    pixart = load_curve(labels["pixart"], pixart_runs, plots_dir)
    baseline = load_curve(labels["baseline"], [baseline_run], plots_dir)
    rows = {f"{labels['pixart']} after {run}": run for run in pixart_runs} | {labels["baseline"]: baseline_run}
    final = final_table(rows, metrics_dir, a100_days_per_flop)
    headlines = {metric: headline(pixart, baseline, metric) for metric in METRICS}
    return Comparison(pixart, baseline, headlines, final, {k: dict(v) for k, v in paper.items()}, ceiling_row(metrics_dir))
