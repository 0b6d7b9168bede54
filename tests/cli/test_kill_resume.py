"""``kill -9`` at a random step of a training stage, then the same command again: the run continues
from its last checkpoint and matches an uninterrupted run bit for bit (losses, EMA, optimiser).

Real processes, killed with SIGKILL; the kill point comes from a printed seed (``KILL_SEED=<n>``
replays it). Tiny models and eight steps, a checkpoint after every step.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
import torch
from interruptions import kill_point, kill_seed
from safetensors.torch import load_file
from tiny_runs import finish, start, tiny_train_command

MAX_STEPS = 8
STAGES = {"1_pixel": "stage1", "2_alignment": "stage2"}
TIMING_COLUMNS = {"samples_per_s", "cost_device_hours"}


def train(workspace: Path, stages: list[str], run_prefix: str, *extra: str) -> subprocess.Popen:
    """Start ``train_stage`` on the tiny models for ``stages`` (one process; several as a Hydra multirun
    whose stages share the workspace's folders, as single runs do)."""
    return start(tiny_train_command(workspace, stages, run_prefix, "job_outputs=false", *extra, max_steps=MAX_STEPS))


def logged_losses(workspace: Path, run: str, session: int) -> dict[int, float]:
    """``train/loss`` of every step a session of the run trained, as logged (exact float reprs)."""
    logs = workspace / "logs" / run / f"version_{session}"
    assert (logs / "hparams.yaml").is_file(), f"no session {session} of {run}"
    rows = csv.DictReader((logs / "metrics.csv").open()) if (logs / "metrics.csv").is_file() else []
    return {int(r["step"]) + 1: float(r["train/loss"]) for r in rows if r.get("train/loss")}


def history(workspace: Path, run: str) -> list[dict]:
    rows = list(csv.DictReader((workspace / "plots" / f"{run}_loss.csv").open()))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def final_state(workspace: Path, run: str) -> dict:
    checkpoint = torch.load(workspace / "ckpt" / run / "last.ckpt", map_location="cpu", weights_only=False)
    metrics = json.loads((workspace / "metrics" / f"{run}.json").read_text())
    return {
        "ema": load_file(workspace / "ckpt" / run / "transformer" / "diffusion_pytorch_model.safetensors"),
        "weights": checkpoint["state_dict"],
        "optimizer": checkpoint["optimizer_states"][0],
        "scheduler": checkpoint["lr_schedulers"][0],
        "counts": (metrics["steps"], metrics["skipped_steps"], metrics["cost"]["samples"], metrics["cost"]["flops"]),
    }


def assert_same_tensors(a, b, what: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), what
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), what
        for key in a:
            assert_same_tensors(a[key], b[key], f"{what}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), what
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{what}[{i}]")
    else:
        assert a == b, f"{what}: {a!r} != {b!r}"


def test_a_stage_killed_at_a_random_step_resumes_to_the_uninterrupted_result(workspace):
    seed = kill_seed()
    points = {stage: kill_point(seed + i, MAX_STEPS) for i, stage in enumerate(STAGES)}
    context = f"KILL_SEED={seed}: " + ", ".join(f"{STAGES[s]} killed at step {k} ({phase})" for s, (k, phase) in points.items())
    print(context)

    # The uninterrupted runs and the runs to kill side by side, then the same command again (as `dvc repro` runs it).
    reference = train(workspace, list(STAGES), "ref_")
    killed = {
        stage: train(workspace, [stage], "run_", "+callbacks.kill._target_=interruptions.KillAt",
                     f"+callbacks.kill.step={step}", f"+callbacks.kill.phase={phase}")
        for stage, (step, phase) in points.items()
    }  # fmt: skip
    for stage, process in killed.items():
        assert finish(process) == -9, f"{context}: {STAGES[stage]} was not killed\n{process.output}"
        run_dir = workspace / "ckpt" / f"run_{STAGES[stage]}"
        step = points[stage][0]
        assert torch.load(run_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == step - 1, context
        (run_dir / ".last.ckpt.torn.tmp").write_bytes(b"half a checkpoint")  # as a kill inside torch.save leaves it
    assert finish(reference) == 0, reference.output
    # Twice: the first continues the killed run; the second finds it finished and only writes its outputs.
    resumed = train(workspace, list(STAGES), "run_", "+session=resume,again")
    assert finish(resumed) == 0, resumed.output

    for stage, (step, _) in points.items():
        ref, run = f"ref_{STAGES[stage]}", f"run_{STAGES[stage]}"
        reference, resumed = logged_losses(workspace, ref, 0), logged_losses(workspace, run, 1)
        assert sorted(resumed) == list(range(step, MAX_STEPS + 1)), f"{context}: {run} resumed at the wrong step"
        assert resumed == {s: reference[s] for s in resumed}, f"{context}: {run} losses differ after the resume"
        assert logged_losses(workspace, run, 2) == {}, f"{context}: {run} trained again after it had finished"
        assert history(workspace, run) == history(workspace, ref), f"{context}: {run} loss history differs"
        assert len(history(workspace, run)) == MAX_STEPS
        assert_same_tensors(final_state(workspace, run), final_state(workspace, ref), f"{context}: {run}")
        assert not list((workspace / "ckpt" / run).glob(".*.tmp")), "the torn temporary checkpoint was left behind"


def test_a_stage_trained_twice_with_the_same_seed_gives_identical_weights(workspace):
    """Reproducibility on CPU: the same command twice, bit-for-bit the same weights, EMA and optimiser."""
    stage, run = "2_alignment", STAGES["2_alignment"]
    for prefix in ("twice_a_", "twice_b_"):  # one after the other, as two users would run it
        process = train(workspace, [stage], prefix)
        assert finish(process) == 0, process.output
    a, b = (final_state(workspace, f"{prefix}{run}") for prefix in ("twice_a_", "twice_b_"))
    assert_same_tensors(a, b, f"{run} trained twice")
    assert history(workspace, f"twice_a_{run}") == history(workspace, f"twice_b_{run}")
