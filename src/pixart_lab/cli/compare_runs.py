"""Compare runs: their loss curves on one PNG and their final metrics side by side (JSON)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from pixart_lab.cli.entry import entry_point  # noqa: E402
from pixart_lab.utils.io import atomic_save, write_json  # noqa: E402


def read_curve(path: Path, column: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``column`` in a loss CSV, rows where it is empty skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no loss history (train that run first)")
    rows = [r for r in csv.DictReader(path.open()) if r.get(column)]
    return [int(r["step"]) for r in rows], [float(r[column]) for r in rows]


def moving_average(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


@entry_point("compare_runs")
def main(cfg: DictConfig) -> dict:
    plots, metrics_dir = Path(cfg.paths.plots_dir), Path(cfg.paths.metrics_dir)
    fig, axes = plt.subplots(1, len(cfg.columns), figsize=(5 * len(cfg.columns), 3.6), squeeze=False)
    summary = {}
    for run in cfg.runs:
        for ax, column in zip(axes[0], cfg.columns):
            steps, values = read_curve(plots / f"{run}_loss.csv", column)
            if column == "loss":
                values = moving_average(values, cfg.smoothing)
            ax.plot(steps, values, label=run, marker="" if column == "loss" else "o")
            title = f"{column} (moving average of {cfg.smoothing} logged values)" if column == "loss" else column
            ax.set(xlabel="step", ylabel=column, title=title, yscale="log")
        final = metrics_dir / f"{run}.json"
        summary[run] = json.loads(final.read_text()) if final.is_file() else {}
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    atomic_save(cfg.outputs.plot, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    write_json(cfg.outputs.metrics, summary)
    for run, figures in summary.items():
        print(f"{run}: train_loss {figures.get('train_loss')} val_loss {figures.get('val_loss')} steps {figures.get('steps')}")
    return summary


if __name__ == "__main__":
    main()
