"""The comparison report: the headline ratio against closed forms, the HTML page, the W&B Report object."""

from __future__ import annotations

import base64
import json
import re

import pytest
from PIL import Image

from pixart_lab.evaluation.report import Curve, compare, compute_to_reach, headline, plot_quality_vs_compute
from pixart_lab.evaluation.report_html import comparison_page
from pixart_lab.evaluation.wandb_report import build_wandb_report, publish
from pixart_lab.training.history import write_csv
from pixart_lab.training.periodic_eval import CURVE_COLUMNS

PAPER = {
    "pixart_alpha": {"a100_days": 753, "usd": 28400, "fid_30k_coco": 7.32, "note": "0.6 B"},
    "sd_1_5": {"a100_days": 6250, "usd": 320000, "fid_30k_coco": 9.62, "note": "0.9 B"},
}


def test_compute_to_reach_interpolates_the_first_crossing():
    xs, falling = [1.0, 2.0, 3.0, 4.0], [10.0, 8.0, 6.0, 4.0]
    assert compute_to_reach(xs, falling, 7.0, lower_is_better=True) == pytest.approx(2.5)
    assert compute_to_reach(xs, falling, 12.0, lower_is_better=True) == 1.0  # reached at the first evaluation
    assert compute_to_reach(xs, falling, 3.0, lower_is_better=True) is None  # never reached
    assert compute_to_reach(xs, [0.1, 0.3, 0.2, 0.5], 0.25, lower_is_better=False) == pytest.approx(1.75)


def write_run(plots, run, rows):
    write_csv(plots / f"{run}_eval.csv", rows, CURVE_COLUMNS)


def row(step, flops, fid, clip=None, comp=None):
    return {"step": step, "flops": flops, "curriculum_flops": flops, "curriculum_usd": flops / 1e12,
            "curriculum_emissions_kg_co2": flops / 1e14, "fid": fid, "fid_floor": 1.0, "clip_score": clip, "compositional": comp}  # fmt: skip


@pytest.fixture
def finished_runs(tmp_path):
    """A three-stage curriculum and a baseline with known curves, costs and final evaluations."""
    plots, metrics = tmp_path / "plots", tmp_path / "metrics"
    write_run(plots, "stage1", [row(250, 1e12, 60.0), row(500, 2e12, 40.0)])
    write_run(plots, "stage2", [row(350, 3e12, 30.0, 20.0, 0.02), row(700, 4e12, 20.0, 30.0, 0.05)])
    write_run(plots, "stage3", [row(150, 5e12, 18.0, 31.0, 0.06)])
    write_run(plots, "baseline_sd", [row(500, 2.5e12, 50.0, 10.0, 0.0), row(1000, 5e12, 25.0, 25.0, 0.03)])
    for run, flops in (("stage1", 2e12), ("stage2", 4e12), ("stage3", 5e12), ("baseline_sd", 5e12)):
        cost = {"flops": flops, "flops_per_sample": 1e9, "usd": 0.1, "emissions_kg_co2": 0.01, "a100_days": 1e-6}
        cost["curriculum"] = {"flops": flops, "usd": 0.1, "emissions_kg_co2": 0.01}
        metrics.mkdir(exist_ok=True)
        (metrics / f"{run}.json").write_text(json.dumps({"parameters": 2_200_000, "cost": cost}))
        (metrics / f"eval_{run}.json").write_text(json.dumps({"fid": {"generated": 20.0, "real_vs_real_floor": 1.1}, "size": [64, 64]}))
    for run in ("stage2", "stage3", "baseline_sd"):
        Image.new("RGB", (40, 20), "white").save(plots / f"{run}_samples.png")
    return plots, metrics


def test_the_headline_ratio_is_pixarts_compute_to_the_baselines_final_fid_over_the_baselines(finished_runs):
    plots, metrics = finished_runs
    comparison = compare(["stage1", "stage2", "stage3"], "baseline_sd", plots, metrics,
                         {"pixart": "PixArt", "baseline": "UNet"}, 1e-20, PAPER)  # fmt: skip
    fid = comparison.headlines["fid"]
    # The baseline ends at FID 25 after 5e12 FLOPs; PixArt passes 25 between (3e12, 30) and (4e12, 20): 3.5e12.
    assert fid["baseline_final"] == 25.0 and fid["pixart_compute_to_reach"] == pytest.approx(3.5e12)
    assert fid["ratio"] == pytest.approx(0.7)
    # CLIP score (higher is better): the baseline's 25 is passed between 20 and 30 -> 3.5e12 as well.
    assert comparison.headlines["clip_score"]["ratio"] == pytest.approx(0.7)
    assert comparison.headlines["compositional"]["pixart_compute_to_reach"] == pytest.approx(3e12 + 1e12 / 3)
    assert [b["run"] for b in comparison.pixart.boundaries] == ["stage1", "stage2"]
    assert comparison.pixart.boundaries[0]["curriculum_flops"] == 2e12
    summary = comparison.summary()
    assert summary["compute_ratio_to_reach_baseline_fid"] == pytest.approx(0.7)
    assert summary["paper_compute_ratio"] == pytest.approx(753 / 6250)
    assert summary["parity"]["parameters"] == {"pixart": 2_200_000, "baseline": 2_200_000}
    assert comparison.sentences()[0].startswith("PixArt reached the baseline's final FID (25) after 3.5e+12 training FLOPs: 70.0%")

    never = headline(comparison.pixart, Curve("UNet", [row(1, 5e12, 10.0)]), "fid")
    assert never["ratio"] is None and never["pixart_best"] == 18.0


def test_the_report_page_stands_alone(finished_runs, tmp_path):
    plots, metrics = finished_runs
    comparison = compare(["stage1", "stage2", "stage3"], "baseline_sd", plots, metrics,
                         {"pixart": "PixArt", "baseline": "UNet"}, 1e-20, PAPER)  # fmt: skip
    figure = plot_quality_vs_compute(comparison.pixart, comparison.baseline, tmp_path / "figure.png")
    assert Image.open(figure).size == (1560, 1020)  # 3 metrics x 3 compute axes
    grids = {"stage 2": plots / "stage2_samples.png", "baseline": plots / "baseline_sd_samples.png"}
    page = comparison_page("t", comparison, figure, grids, {"final": "about the table", "paper": "about the paper"})
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3 and base64.b64decode(images[0]) == figure.read_bytes()
    assert "70.0%" in page and "12.0%" in page and "PixArt after stage3" in page and "about the paper" in page
    assert "src=\"http" not in page and "<script" not in page


def test_the_wandb_report_is_built_offline_and_published_only_when_logged_in(monkeypatch):
    report = build_wandb_report("pixart-lab", "someone", "embedded", ["stage1", "baseline_sd"], "PixArt reached ...")
    grid = report.blocks[-1]
    assert report.title.startswith("PixArt vs SD-class baseline")
    assert len(grid.panels) == 9 and {p.x for p in grid.panels} == {"eval/curriculum_flops", "eval/curriculum_usd", "eval/curriculum_emissions_kg_co2"}
    assert {p.y[0] for p in grid.panels} == {"eval/fid", "eval/clip_score", "eval/compositional"}
    assert "Group = 'embedded'" in grid.runsets[0].filters and "'baseline_sd'" in grid.runsets[0].filters
    monkeypatch.setattr(type(report), "save", lambda self, *a, **k: pytest.fail("saved while offline"))
    assert publish(report, online=False).startswith("W&B Report not published: no W&B credentials")


def test_ceiling_row_reads_the_round_trip_figures(tmp_path):
    from pixart_lab.evaluation.report import ceiling_row

    assert ceiling_row(tmp_path) is None  # not measured: no row, no invented figures
    (tmp_path / "ceiling.json").write_text(json.dumps({
        "fid": {"round_trip": 3.5, "real_vs_real_floor": 2.0, "images": 500},
        "clip_score": {"round_trip": 30.1, "real": 31.0},
        "compositional": {"overall": 0.97, "tasks": {}},
    }))  # fmt: skip
    row = ceiling_row(tmp_path)
    assert row == {"model": "real images through the VAE (ceiling)", "fid": 3.5, "fid_floor": 2.0, "clip_score": 30.1, "compositional": 0.97}
