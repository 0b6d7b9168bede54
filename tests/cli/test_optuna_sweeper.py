"""The project's Optuna sweeper: Hydra's sweep syntax becomes Optuna distributions, trials run in
batches of n_jobs, a failed job is a failed trial, and the best trial is written to the sweep folder."""

from __future__ import annotations

import optuna
import pytest
import yaml
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.pixart_lab_optuna.optuna_sweeper import OptunaSweeper, search_space


def test_sweep_syntax_maps_to_optuna_distributions():
    fixed, space = search_space([
        "stage.lr=tag(log, interval(1e-4, 1e-2))", "stage.warmup_steps=choice(0, 50)", "model=dit,pixart",
        "batch=range(8, 33, 8)", "layers=tag(int, interval(2, 12))", "dropout=interval(0, 0.2)", "seed=3",
    ])  # fmt: skip
    assert fixed == ["seed=3"]
    assert space["stage.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert space["stage.warmup_steps"] == optuna.distributions.CategoricalDistribution([0, 50])
    assert space["model"] == optuna.distributions.CategoricalDistribution(["dit", "pixart"])
    assert space["batch"] == optuna.distributions.CategoricalDistribution([8, 16, 24, 32])
    assert space["layers"] == optuna.distributions.IntDistribution(2, 12)
    assert space["dropout"] == optuna.distributions.FloatDistribution(0.0, 0.2)


class RecordingLauncher:
    """Runs each job as f(x) = (x - 3)^2, fails the jobs whose x is above `fail_above`."""

    def __init__(self, fail_above: float):
        self.batches: list[list[list[str]]] = []
        self.fail_above = fail_above

    def launch(self, jobs, initial_job_idx):
        self.batches.append([list(job) for job in jobs])
        returns = []
        for job in jobs:
            x = float(dict(o.split("=", 1) for o in job)["x"])
            if x > self.fail_above:
                returns.append(JobReturn(overrides=job, status=JobStatus.FAILED, _return_value=RuntimeError("diverged")))
            else:
                returns.append(JobReturn(overrides=job, status=JobStatus.COMPLETED, _return_value=(x - 3) ** 2))
        return returns


def sweeper(tmp_path, launcher, **kwargs) -> OptunaSweeper:
    sweeper = OptunaSweeper(sampler=optuna.samplers.RandomSampler(seed=0), params={"x": "interval(0, 10)"}, **kwargs)
    sweeper.config = OmegaConf.create({"optimized_metric": "loss"})
    sweeper.launcher, sweeper.sweep_dir = launcher, tmp_path
    sweeper.validate_batch_is_legal = lambda batch: None  # composing needs a Hydra context; not under test
    return sweeper


def test_trials_run_in_batches_and_the_best_one_is_written(tmp_path):
    launcher = RecordingLauncher(fail_above=8.0)
    results = sweeper(tmp_path, launcher, n_trials=7, n_jobs=3).sweep(["seed=1"])
    assert [len(batch) for batch in launcher.batches] == [3, 3, 1]
    jobs = [job for batch in launcher.batches for job in batch]
    assert all(job[0] == "seed=1" and job[1].startswith("x=") for job in jobs)
    xs = [float(job[1][2:]) for job in jobs]
    completed = [x for x in xs if x <= 8.0]
    assert results["trials"] == 7 and results["failed_trials"] == 7 - len(completed)
    assert results["best_value"] == pytest.approx(min((x - 3) ** 2 for x in completed))
    assert yaml.safe_load((tmp_path / "optimization_results.yaml").read_text()) == results


def test_a_search_where_every_trial_fails_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="all 2 trials failed"):
        sweeper(tmp_path, RecordingLauncher(fail_above=-1.0), n_trials=2).sweep([])


def test_a_search_with_nothing_to_search_is_refused(tmp_path):
    search = OptunaSweeper(params={})
    search.sweep_dir = tmp_path
    with pytest.raises(ValueError, match="nothing to search"):
        search.sweep(["seed=1"])
