"""Optuna search as a Hydra sweeper (``hparams_search=optuna``), on current Optuna.

Hydra's own optuna sweeper plugin (hydra-optuna-sweeper 1.3) requires ``optuna<3``, and optuna 2.10's
database storage fails with SQLAlchemy 2; no maintained replacement exists. This sweeper asks Optuna
for ``n_jobs`` trials at a time, launches them as one batch of Hydra jobs (any launcher: local,
submitit), and tells Optuna each job's return value (``optimized_metric``, cli/multirun.py). A failed
job is a failed trial, logged, and the search goes on.

The search space is Hydra's sweep syntax, in ``params`` or on the command line:
``choice(a, b)`` / ``a,b`` / ``range(0, 10, 2)`` -> categorical; ``interval(lo, hi)`` -> float;
``tag(log, interval(lo, hi))`` -> log-uniform; ``tag(int, interval(lo, hi))`` -> integer.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixart_lab.utils.io import atomic_write_bytes

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def distribution(override: Override) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution of one sweep override (see the module docstring)."""
    import optuna  # here, not at the top: Hydra imports every plugin module when any entry point starts (0.4 s)

    sweep = override.value()
    if isinstance(sweep, IntervalSweep):
        log_scale = "log" in sweep.tags
        if "int" in sweep.tags:
            return optuna.distributions.IntDistribution(int(sweep.start), int(sweep.end), log=log_scale)
        return optuna.distributions.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)
    if isinstance(sweep, (ChoiceSweep, RangeSweep)):
        return optuna.distributions.CategoricalDistribution(list(override.sweep_iterator()))
    raise ValueError(f"{override.input_line}: Optuna cannot search a {type(sweep).__name__} (use choice, range or interval)")


def search_space(overrides: list[str]) -> tuple[list[str], dict[str, optuna.distributions.BaseDistribution]]:
    """Split overrides into those every trial takes as they are and the distributions to search."""
    fixed, space = [], {}
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(override.input_line)
    return fixed, space


class OptunaSweeper(Sweeper):
    """Optuna's ask-and-tell loop over batches of Hydra jobs."""

    def __init__(
        self,
        sampler: Any = None,
        direction: str = "minimize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        params: dict[str, str] | None = None,
    ):
        if n_trials < 1 or n_jobs < 1:
            raise ValueError(f"hydra.sweeper: n_trials and n_jobs must be at least 1 (found {n_trials}, {n_jobs})")
        self.sampler_config, self.direction, self.study_name = sampler, direction, study_name
        self.storage, self.n_trials, self.n_jobs = storage, n_trials, n_jobs
        self.params = dict(params or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def sweep(self, arguments: list[str]) -> dict:
        import optuna

        fixed, space = search_space([*(f"{key}={value}" for key, value in self.params.items()), *arguments])
        if not space:
            raise ValueError("hparams_search: nothing to search (give hydra.sweeper.params or sweep overrides)")
        sampler = instantiate(self.sampler_config) if isinstance(self.sampler_config, DictConfig) else self.sampler_config
        study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, sampler=sampler, direction=self.direction, load_if_exists=True
        )
        log.info("Optuna %s: %d trials over %s", self.direction, self.n_trials, ", ".join(space))
        launched = 0
        while launched < self.n_trials:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, self.n_trials - launched))]
            jobs = [[*fixed, *(f"{key}={value}" for key, value in trial.params.items())] for trial in trials]
            self.validate_batch_is_legal(jobs)
            for trial, job in zip(trials, self.launcher.launch(jobs, initial_job_idx=launched)):
                if job.status == JobStatus.COMPLETED:
                    study.tell(trial, float(job.return_value))
                else:
                    log.warning("trial %d failed (%s): counted as failed", trial.number, job._return_value)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
            launched += len(trials)
        return self.write_results(study)

    def write_results(self, study: optuna.Study) -> dict:
        """``<sweep dir>/optimization_results.yaml``: the best trial, and how many trials failed."""
        import optuna

        states = [t.state for t in study.trials]
        failed = states.count(optuna.trial.TrialState.FAIL)
        if failed == len(states):
            raise RuntimeError(f"hparams_search: all {failed} trials failed (see the jobs' logs in {self.sweep_dir})")
        results = {
            "name": "optuna",
            "direction": self.direction,
            "best_params": study.best_params,
            "best_value": study.best_value,
            "best_trial": study.best_trial.number,
            "trials": len(states),
            "failed_trials": failed,
        }
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.sweep_dir / "optimization_results.yaml", yaml.safe_dump(results, sort_keys=False).encode())
        log.info("best %s = %s with %s", OmegaConf.select(self.config, "optimized_metric"), study.best_value, study.best_params)
        return results
