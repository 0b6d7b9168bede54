"""Hydra multirun jobs: each its own output folder and W&B run (grouped by sweep), DDP that trains the
job rather than the sweep, and the value an Optuna sweep optimises.

* ``${pixart.job_dir:<folder>}`` is ``<folder>`` in a single run and ``<job's Hydra folder>/<folder's
  name>`` in a multirun job (``logs/hydra/<run>-multirun/<time>/<n>/checkpoints``, ``.../metrics``, ...),
  so the jobs of a sweep never continue or overwrite each other's checkpoints and metrics
  (``job_outputs=false``: the repository's folders, for a multirun over stages).
* ``${pixart.sweep_group:<default>}`` names the sweep (``<run>-multirun-<time>``) in its jobs;
  ``${pixart.job_name:<name>}`` is ``<name>-<job number>`` there.
* Lightning's DDP launcher starts ranks 1..N-1 with this process' ``sys.argv`` and Hydra's
  ``hydra.run.dir`` (lightning/fabric/strategies/launchers/subprocess_script.py). In a multirun that
  command is the whole sweep (``-m lr=1,2``): every rank would run every job. :func:`single_job`
  makes both the job's own: its overrides only, in RUN mode, in the job's folder, which the ranks
  also receive as ``PIXART_LAB_JOB_DIR`` so they write where rank 0 does. A job that fails after
  starting its ranks stops the sweep (:class:`SweepStopped`): Hydra would go on with the next job,
  and Lightning's watch over the failed job's ranks would kill this process in the middle of it,
  leaving that job's ranks waiting for their rank 0 forever.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from pixart_lab.utils.errors import ConfigError

JOB_DIR_ENV = "PIXART_LAB_JOB_DIR"
# What Lightning's DDP sets up in this process; the next job of the sweep starts its own.
DISTRIBUTED_ENV = (JOB_DIR_ENV, "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "RANK")


class SweepStopped(BaseException):
    """A multirun job failed with other DDP ranks running: the sweep ends here. A ``BaseException``, as
    Hydra records an ``Exception`` as the job's result and starts the next job."""


def _hydra() -> Any | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``, or a config that sets ``hydra.mode: MULTIRUN``)."""
    hydra = _hydra()
    return hydra is not None and hydra.mode == RunMode.MULTIRUN


def job_dir(folder: str, *, _root_: DictConfig) -> str:
    """``folder`` in a single run; ``<this job's Hydra folder>/<folder's name>`` in a multirun job or its
    DDP ranks, unless the config says ``job_outputs: false`` (a multirun over stages that feed each other)."""
    if not _root_.get("job_outputs", True):
        return folder
    root = _hydra().runtime.output_dir if in_multirun() else os.environ.get(JOB_DIR_ENV)
    return str(Path(root) / Path(folder).name) if root else folder


def sweep_group(default: str) -> str:
    """The sweep's name (``<sweep folder's parent>-<sweep folder>``) in a multirun job, else ``default``."""
    if not in_multirun():
        return default
    sweep = Path(str(_hydra().sweep.dir))
    return f"{sweep.parent.name}-{sweep.name}"


def job_name(name: str) -> str:
    """``<name>-<job number>`` in a multirun job, else ``name``."""
    return f"{name}-{_hydra().job.num}" if in_multirun() else name


def register_resolvers() -> None:
    for name, resolver in (("pixart.job_dir", job_dir), ("pixart.sweep_group", sweep_group), ("pixart.job_name", job_name)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


@contextmanager
def single_job() -> Iterator[None]:
    """Inside a multirun job: ``sys.argv``, Hydra's run folder and ``PIXART_LAB_JOB_DIR`` describe this
    job alone (what Lightning's DDP launcher re-runs for the other ranks); restored afterwards."""
    if not in_multirun():
        yield
        return
    hydra = _hydra()
    argv, previous_dir = sys.argv, hydra.run.dir
    previous_env = {key: os.environ.get(key) for key in DISTRIBUTED_ENV}
    # RUN mode: a config group chosen in the sweep (hparams_search=optuna) may set hydra.mode itself.
    sys.argv = [argv[0], *hydra.overrides.task, "hydra.mode=RUN"]
    with read_write(hydra.run):
        hydra.run.dir = hydra.runtime.output_dir
    os.environ[JOB_DIR_ENV] = hydra.runtime.output_dir
    try:
        yield
    except Exception as error:
        from pixart_lab.utils.device import distributed_layout

        if distributed_layout()[1] > 1:  # the job's process group, still open: it ran with other ranks
            raise SweepStopped(f"job {hydra.job.num} failed with its DDP ranks started: the sweep stops") from error
        raise
    finally:
        end_process_group()
        end_wandb_run()
        sys.argv = argv
        with read_write(hydra.run):
            hydra.run.dir = previous_dir
        for key, value in previous_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def end_process_group() -> None:
    """Close the job's DDP process group: Lightning would reuse it, with the finished job's ranks, in the next job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_wandb_run() -> None:
    """Finish the job's W&B run: Lightning's WandbLogger would otherwise log the next job into it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def sweep_objective(result: Any, cfg: DictConfig) -> Any:
    """The job's return value: ``result`` itself, or with ``optimized_metric`` set (an Optuna sweep),
    the number at that dotted key of the metrics ``result`` (``val_ema_loss``, ``quality.fid``)."""
    key = cfg.get("optimized_metric")
    if not key:
        return result
    value: Any = result
    for part in str(key).split("."):
        if not isinstance(value, dict) or part not in value:
            found = ", ".join(sorted(value)) if isinstance(value, dict) else type(value).__name__
            raise ConfigError(f"optimized_metric={key}: the run reports no '{part}' (found: {found})")
        value = value[part]
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"optimized_metric={key}: expected a number, found {value!r}")
    return float(value)
