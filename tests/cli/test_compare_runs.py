import json
import subprocess
import sys

from PIL import Image

from pixart_lab.cli.compare_runs import moving_average, read_curve


def test_moving_average_and_curve_reading(tmp_path):
    assert moving_average([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    csv = tmp_path / "run_loss.csv"
    csv.write_text("step,loss,val_loss\n10,0.5,\n20,0.4,0.45\n")
    assert read_curve(csv, "val_loss") == ([20], [0.45])
    assert read_curve(csv, "loss") == ([10, 20], [0.5, 0.4])


def test_compare_runs_plots_both_curves_and_collects_final_metrics(tmp_path):
    for run, loss in (("a", 0.3), ("b", 0.5)):
        (tmp_path / "plots").mkdir(exist_ok=True)
        (tmp_path / "plots" / f"{run}_loss.csv").write_text(f"step,loss,val_loss\n10,{loss + 0.1},\n20,{loss},{loss}\n")
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / f"{run}.json").write_text(json.dumps({"train_loss": loss, "steps": 20}))
    done = subprocess.run(
        [sys.executable, "-m", "pixart_lab.cli.compare_runs", "runs=[a,b]", "name=ab",
         f"paths.plots_dir={tmp_path}/plots", f"paths.metrics_dir={tmp_path}/metrics", f"hydra.run.dir={tmp_path}/h"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "metrics" / "compare_ab.json").read_text()) == {
        "a": {"train_loss": 0.3, "steps": 20}, "b": {"train_loss": 0.5, "steps": 20}
    }
    assert Image.open(tmp_path / "plots" / "compare_ab.png").size[0] > 500
    assert "a: train_loss 0.3" in done.stdout
