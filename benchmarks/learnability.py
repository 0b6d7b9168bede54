"""Learnability study: compositional accuracy per task and FID against training CPU-minutes, per arm.

Each arm of ``benchmarks/learnability_arms.yaml`` is a stage-2 run (``train_stage stage=2_alignment``
with the arm's overrides, ``run_name=learn_<arm>``) on the pipeline's cached features; its periodic
evaluation is the curve. Runs whose curve exists are not repeated (delete the CSV to rerun), so the
study resumes after a kill. Writes ``reports/learnability/learnability.json`` and ``.png``.

    python benchmarks/learnability.py                      # every arm
    python benchmarks/learnability.py --arms default lr_4e-3 --max-steps 1500
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

from pixart_lab.evaluation.compositional import TASKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARMS = ROOT / "benchmarks" / "learnability_arms.yaml"


def curve(csv_path: Path) -> list[dict[str, float]]:
    """The periodic-evaluation rows of a run, with CPU-minutes of training (evaluation excluded)."""
    rows = []
    for row in csv.DictReader(csv_path.open()):
        point = {k: float(v) for k, v in row.items() if v not in ("", None)}
        point["cpu_minutes"] = point.get("device_hours", 0.0) * 60
        rows.append(point)
    return rows


def run_arm(name: str, overrides: list[str], max_steps: int | None) -> Path:
    """Train the arm unless its curve exists; return the curve's path."""
    out = ROOT / "plots" / f"learn_{name}_eval.csv"
    if out.is_file():
        print(f"{name}: curve exists ({out.relative_to(ROOT)})")
        return out
    cmd = [sys.executable, "-m", "pixart_lab.cli.train_stage", "stage=2_alignment", f"run_name=learn_{name}", *overrides]
    if max_steps:
        cmd.append(f"stage.max_steps={max_steps}")
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return out


def plot(curves: dict[str, list[dict]], path: Path) -> None:
    panels = [("compositional", "compositional accuracy (overall)")] + [(f"compositional_{t}", t) for t in TASKS] + [("fid", "FID")]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for name, rows in curves.items():
            points = [(r["cpu_minutes"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training CPU-minutes (2 cores)")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arms", nargs="*", help="arm names (default: all of learnability_arms.yaml)")
    parser.add_argument("--max-steps", type=int, default=None, help="override every arm's stage.max_steps")
    parser.add_argument("--out", default=str(ROOT / "reports" / "learnability"))
    args = parser.parse_args()
    arms = yaml.safe_load(ARMS.read_text())
    unknown = sorted(set(args.arms or []) - set(arms))
    if unknown:
        parser.error(f"unknown arms {unknown}; {ARMS.name} defines {sorted(arms)}")
    for name in args.arms or list(arms):
        run_arm(name, arms[name], args.max_steps)
    # Every arm with a curve so far, so that the study can grow a few arms at a time.
    paths = {name: ROOT / "plots" / f"learn_{name}_eval.csv" for name in arms}
    curves = {name: curve(path) for name, path in paths.items() if path.is_file()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "learnability.json").write_text(json.dumps({"arms": {n: {"overrides": arms[n], "curve": c} for n, c in curves.items()}}, indent=2))
    plot(curves, out / "learnability.png")
    for name, rows in curves.items():
        last = rows[-1]
        print(f"{name}: {last['cpu_minutes']:.1f} CPU-min, compositional {last.get('compositional', float('nan')):.3f}, FID {last['fid']:.1f}")


if __name__ == "__main__":
    main()
