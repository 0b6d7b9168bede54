"""Stage `report`: PixArt against the SD-class baseline, as a local HTML report, dvc plots and W&B.

Reads every run's periodic evaluations (``plots/<run>_eval.csv``), full evaluations and costs
(``metrics/``) and sample grids; writes the quality-vs-compute figure, the curves as CSVs for
``dvc plots``, ``metrics/report.json`` (the headline ratios) and one self-contained HTML file.
"""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.evaluation.cost import CostConfig, a100_days
from pixart_lab.evaluation.report import compare, plot_quality_vs_compute, write_curve_csv
from pixart_lab.evaluation.report_html import comparison_page
from pixart_lab.evaluation.wandb_report import build_wandb_report, publish
from pixart_lab.training.wiring import build_loggers, wandb_logged_in
from pixart_lab.utils.io import atomic_write_bytes, write_json


@entry_point("report")
def main(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    plots = Path(cfg.paths.plots_dir)
    cost = CostConfig({k: dict(v) for k, v in cfg.cost.devices.items()}, utilisation=cfg.cost.utilisation)
    paper = OmegaConf.to_container(cfg.paper, resolve=True)
    comparison = compare(cfg.pixart_runs, cfg.baseline_run, plots, cfg.paths.metrics_dir, cfg.labels, a100_days(1.0, cost), paper)

    figure = plot_quality_vs_compute(comparison.pixart, comparison.baseline, cfg.outputs.figure)
    write_curve_csv(comparison.pixart, cfg.outputs.pixart_curve)
    write_curve_csv(comparison.baseline, cfg.outputs.baseline_curve)
    grids = {label: plots / f"{run}_samples.png" for label, run in cfg.grids.items()}
    atomic_write_bytes(cfg.outputs.html, comparison_page(cfg.title, comparison, figure, grids, cfg.notes).encode())

    summary = comparison.summary()
    report = build_wandb_report(cfg.wandb.project, cfg.wandb.entity or "offline", cfg.wandb.group,
                                [*cfg.pixart_runs, cfg.baseline_run], "\n\n".join(comparison.sentences()))  # fmt: skip
    summary["wandb_report"] = publish(report, online=wandb_logged_in())
    for logger in build_loggers(cfg.logger):
        logger.log_metrics({f"report/{m}_compute_ratio": r["ratio"] for m, r in comparison.headlines.items() if r.get("ratio") is not None}, step=0)
        logger.finalize("success")
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json(cfg.outputs.metrics, summary)
    print("\n".join([*comparison.sentences(), summary["wandb_report"], f"report: {cfg.outputs.html}"]))
    return summary


if __name__ == "__main__":
    main()
