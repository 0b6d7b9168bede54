"""Stages `stage1_pixel`, `stage2_alignment`, `stage3_aesthetic`, `baseline_sd`: train one stage."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.diffusion.sampling import save_noise_schedule
from pixart_lab.models.denoisers import count_parameters
from pixart_lab.training.checkpoints import export_network, initialise_from, resolve_init, resume_path, weight_files
from pixart_lab.training.compute_cost import ComputeCost
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.periodic_eval import PeriodicEvaluation
from pixart_lab.training.resume import ResumeDecision, RunFingerprint, WriteFingerprint, decide_resume, sha256_files
from pixart_lab.training.wiring import build_callbacks, build_loggers
from pixart_lab.utils.io import write_json

LOGGED = (
    "train/loss", "train/mse", "train/vlb", "train/grad_norm", "train/samples_per_s", "val/loss", "val/ema_loss",
    "cost/flops", "cost/samples", "cost/device_hours", "train/skipped_steps",
)  # fmt: skip


def final_metrics(trainer, module, history: MetricHistory, seconds: float, last_n: int = 5) -> dict:
    """Mean of the last ``last_n`` recorded training losses, last validation losses, speed and size."""
    rows = [r for r in history.rows if "loss" in r][-last_n:]
    metrics = {
        "steps": trainer.global_step,
        "seconds": round(seconds, 1),
        "parameters": count_parameters(module.denoiser),
        "train_loss": round(sum(r["loss"] for r in rows) / len(rows), 5) if rows else None,
        "train_mse": round(sum(r["mse"] for r in rows) / len(rows), 5) if rows else None,
    }
    for key in ("val_loss", "val_ema_loss"):  # from the history, which a resumed run restores whole
        if validated := [r[key] for r in history.rows if key in r]:
            metrics[key] = round(validated[-1], 5)
    metrics["skipped_steps"] = int(module.skipped_steps)
    speeds = [r["samples_per_s"] for r in history.rows if "samples_per_s" in r]
    metrics["samples_per_s_median"] = round(sorted(speeds)[len(speeds) // 2], 1) if speeds else None
    return metrics


@dataclass
class FitResult:
    """A finished fit: the trainer and the callbacks whose records make the run's metrics."""

    trainer: L.Trainer
    history: MetricHistory
    cost: ComputeCost
    quality: PeriodicEvaluation | None


def run_fingerprint(cfg: DictConfig, data: L.LightningDataModule, init: Path | None) -> RunFingerprint:
    """The run's configuration (``resume_check``), its feature cache and initial weights, by hash."""
    return RunFingerprint.of(
        cfg, cfg.resume_check.config_keys, cfg.resume_check.ignore,
        features=sha256_files(data.input_files(), data.features_dir),
        init=sha256_files(weight_files(init)) if init is not None else None,
    )  # fmt: skip


def decide(cfg: DictConfig, fingerprint: RunFingerprint) -> ResumeDecision:
    """Whether and where the run continues ``cfg.resume`` (the rules of :func:`decide_resume`)."""
    return decide_resume(resume_path(cfg.resume, cfg.run_dir), fingerprint, cfg.trainer.max_steps, cfg.resume != "last")


def fit(
    cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule, fingerprint: RunFingerprint, resume: ResumeDecision
) -> FitResult:
    """Train ``module`` (from ``resume``) with the configured trainer, loggers, checkpoints, history,
    cost and, where configured, sample grids and periodic evaluation."""
    history = MetricHistory(cfg.outputs.plot, keys=LOGGED, every_n_steps=cfg.outputs.plot_every_n_steps)
    cost = instantiate(cfg.cost)
    quality = instantiate(cfg.periodic_eval) if cfg.get("periodic_eval") else None
    measured = [*([instantiate(cfg.samples)] if cfg.get("samples") else []), *([quality] if quality else [])]
    # The cost callback first: a step's history row then holds its cost/* values, and the grids and
    # evaluations read the totals including that step.
    callbacks = build_callbacks(cfg.callbacks, cost, history, instantiate(cfg.checkpoint), *measured, WriteFingerprint(fingerprint))
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.logger), callbacks=callbacks)
    for logger in trainer.loggers:  # the composed config: every run in W&B / CSV says how it was made
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=data, ckpt_path=resume.path)
    if resume.finished:  # Lightning restores it but runs no loop and no train-end hooks: write their outputs
        for callback in (history, *measured, cost):
            callback.on_train_end(trainer, module)
    return FitResult(trainer, history, cost, quality)


def write_run_metrics(cfg: DictConfig, module, result: FitResult, start: float, **about) -> dict:
    """``about`` the run, its final metrics, cost and last evaluation, written to ``cfg.outputs.metrics``."""
    metrics = {**about, **final_metrics(result.trainer, module, result.history, time.perf_counter() - start)}
    metrics["cost"] = result.cost.summary()
    if result.quality is not None and result.quality.rows:
        metrics["quality"] = result.quality.rows[-1]
    if result.trainer.is_global_zero:  # DDP: every rank holds the same run; one writes it
        write_json(cfg.outputs.metrics, metrics)
        print(f"{cfg.run_name}: {metrics}")
    return metrics


@entry_point("train_stage")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    init = resolve_init(cfg.init, cfg.paths.checkpoints_dir)
    data = instantiate(cfg.data_module)
    fingerprint = run_fingerprint(cfg, data, init)  # checked before any model is built
    resume = decide(cfg, fingerprint)
    denoiser = instantiate(cfg.model.denoiser)
    if init is not None:
        initialise_from(denoiser.network, init)
    module = instantiate(cfg.module, denoiser=denoiser)
    result = fit(cfg, module, data, fingerprint, resume)

    if result.trainer.is_global_zero:
        export_network(module.ema.module.network, cfg.run_dir, module.denoiser.component)
        save_noise_schedule(cfg.run_dir, cfg.model.objective)
    return write_run_metrics(cfg, module, result, start, init=cfg.init, caption=cfg.caption, model=cfg.model.name)


if __name__ == "__main__":
    main()
