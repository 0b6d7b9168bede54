"""DVC experiments: ``dvc exp run -S <conf file>:<key>=<value>`` rewrites the file it names (DVC's own
override code, on every file the README says to sweep), and on a one-stage pipeline of the tiny models a
queued 2-point sweep (``--queue``, ``dvc queue start``) after which ``dvc exp show`` lists params and metrics."""

from __future__ import annotations

import pytest

import csv
import io
import time
from pathlib import Path

import yaml
from dvc.utils.hydra import apply_overrides
from test_pipeline import run, temporary_clone
from tiny_runs import tiny_train_command

LR_KEY = "conf/stage/2_alignment.yaml:stage.lr"
CONF = Path(__file__).parents[2] / "conf"
# The files the README names for `dvc exp run -S`, each with a key to set and the value to set it to.
SWEEPABLE = {
    **{f"stage/{p.stem}.yaml": ("stage.lr", 1.5e-3) for p in sorted((CONF / "stage").glob("*.yaml"))},
    "backbone/tiny.yaml": ("num_layers", 4),
    "sampler/dpm_solver.yaml": ("guidance_scale", 3.0),
    "finetune/lora.yaml": ("strategy.rank", 4),
}


def nested(data: dict, dotted: str) -> object:
    for key in dotted.split("."):
        data = data[key]
    return data


@pytest.mark.parametrize("name", sorted(SWEEPABLE))
def test_set_param_rewrites_only_the_key_it_names_in_each_sweepable_conf_file(name, tmp_path):
    key, value = SWEEPABLE[name]
    original = yaml.safe_load((CONF / name).read_text())
    copy = tmp_path / Path(name).name
    copy.write_text((CONF / name).read_text())
    apply_overrides(copy, [f"{key}={value}"])  # what `dvc exp run -S` does to the file, interpolations resolved
    rewritten = yaml.safe_load(copy.read_text())
    assert nested(rewritten, key) == value and nested(original, key) != value
    parent, _, leaf = key.rpartition(".")
    (nested(original, parent) if parent else original)[leaf] = value
    assert rewritten == original  # nothing else changed (DVC would write resolved interpolations back)


def tiny_stage(workspace: Path) -> dict:
    """dvc.yaml's one stage: stage 2 on the tiny workspace's features, its outputs inside the repository."""
    inside = {"run_name": "exp", "paths.checkpoints_dir": "checkpoints", "paths.metrics_dir": "metrics",
              "paths.plots_dir": "plots", "paths.log_dir": "logs", "hydra.run.dir": "logs/hydra"}  # fmt: skip
    cmd = [f"{key}={inside[key]}" if (key := arg.split("=", 1)[0]) in inside else arg
           for arg in tiny_train_command(workspace, ["2_alignment"], "", max_steps=4)]  # fmt: skip
    return {
        "cmd": " ".join(cmd),
        "params": [{"conf/stage/2_alignment.yaml": ["stage.lr"]}],
        "metrics": [{"metrics/exp.json": {"cache": False}}],
    }


def wait_for_queue(clone: Path, timeout_s: float = 900) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], clone)
        if not any(state in status for state in ("Queued", "Running")):
            return status
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


@pytest.mark.slow
def test_a_queued_two_point_sweep_runs_and_exp_show_lists_its_params_and_metrics(workspace, tmp_path):
    clone = temporary_clone(tmp_path)
    (clone / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": tiny_stage(workspace)}}, sort_keys=False))
    run(["git", "add", "-A"], clone)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny pipeline"], clone)

    for lr in ("0.001", "0.004"):
        assert "Queued experiment" in run(["dvc", "exp", "run", "--queue", "-S", f"{LR_KEY}={lr}"], clone)
    run(["dvc", "queue", "start", "-j", "1"], clone)
    status = wait_for_queue(clone)
    assert status.count("Success") == 2, status

    table = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv", "--no-pager"], clone))))
    experiments = [row for row in table if row.get("Experiment") and row.get("stage.lr") in ("0.001", "0.004")]
    assert sorted(row["stage.lr"] for row in experiments) == ["0.001", "0.004"], table
    assert [row["steps"] for row in experiments] == ["4", "4"]
    assert experiments[0]["train_loss"] != experiments[1]["train_loss"]  # the -S value reached the run
