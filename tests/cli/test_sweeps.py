"""Sweeps as real commands on the tiny models: a 2-job multirun (own folders, one W&B group), a 2-trial
Optuna search, and 2-process DDP (gloo, CPU) inside a multirun: the ranks train the job, not the sweep."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from tiny_runs import finish, start, tiny_train_command

STEPS = 4


def job_folders(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def job_metrics(job: Path, run: str) -> dict:
    return json.loads((job / "metrics" / f"{run}.json").read_text())


def sweep(workspace: Path, prefix: str, *extra: str) -> Path:
    process = start(tiny_train_command(workspace, ["2_alignment"], prefix, "-m", *extra, max_steps=STEPS))
    assert finish(process) == 0, process.output
    return workspace / "hydra" / prefix


def test_each_job_of_a_multirun_has_its_own_folder_and_wandb_run_in_the_sweeps_group(workspace):
    folder = sweep(workspace, "lr_", "stage.lr=1e-3,4e-3", "logger=default")
    jobs = job_folders(folder)
    assert [j.name for j in jobs] == ["0", "1"]
    metrics = [job_metrics(j, "lr_stage2") for j in jobs]
    assert [m["steps"] for m in metrics] == [STEPS, STEPS] and metrics[0]["train_loss"] != metrics[1]["train_loss"]
    for job in jobs:
        assert (job / "ckpt" / "lr_stage2" / "last.ckpt").is_file()
        assert (job / "ckpt" / "lr_stage2" / "transformer" / "config.json").is_file()
        assert (job / "plots" / "lr_stage2_loss.csv").is_file()
    assert not (workspace / "metrics" / "lr_stage2.json").exists()  # nothing in the shared folders
    logged = [yaml.safe_load((j / "logs" / "lr_stage2" / "version_0" / "hparams.yaml").read_text()) for j in jobs]
    assert [c["stage"]["lr"] for c in logged] == [1e-3, 4e-3]
    assert [c["logger"]["wandb"]["name"] for c in logged] == ["lr_stage2-0", "lr_stage2-1"]
    assert {c["logger"]["wandb"]["group"] for c in logged} == {"hydra-lr_"}  # the sweep: <parent>-<sweep folder>
    for job in jobs:
        assert len(list((job / "logs" / "wandb").glob("offline-run-*"))) == 1


def test_an_optuna_search_of_two_trials_minimises_the_reported_validation_loss(workspace):
    folder = sweep(workspace, "optuna_", "hparams_search=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2")
    jobs = job_folders(folder)
    assert len(jobs) == 2
    losses = [job_metrics(j, "optuna_stage2")["val_ema_loss"] for j in jobs]
    trials = [yaml.safe_load((j / ".hydra" / "overrides.yaml").read_text()) for j in jobs]
    assert trials[0] != trials[1] and all(any(o.startswith("stage.lr=") for o in t) for t in trials)
    result = yaml.safe_load((folder / "optimization_results.yaml").read_text())
    assert result["best_value"] == min(losses)
    best = trials[losses.index(min(losses))]
    assert {f"{k}={v}" for k, v in result["best_params"].items()} <= set(best)


def test_ddp_in_a_multirun_trains_each_job_once_with_identical_weights_on_both_ranks(workspace):
    folder = sweep(workspace, "ddp_", "stage.lr=1e-3,4e-3", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                   "+callbacks.rank_weights._target_=rank_weights.SaveRankWeights",
                   "+callbacks.rank_weights.dirpath=${pixart.job_dir:ranks}")  # fmt: skip
    jobs = job_folders(folder)
    assert [j.name for j in jobs] == ["0", "1"]  # the ranks did not start the sweep again
    weights = []
    for job in jobs:
        ranks = [torch.load(job / "ranks" / f"rank{r}.pt", map_location="cpu") for r in (0, 1)]
        assert ranks[0].keys() == ranks[1].keys()
        assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), f"{job}: ranks differ"
        assert job_metrics(job, "ddp_stage2")["steps"] == STEPS
        weights.append(ranks[0])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # each job its own lr
