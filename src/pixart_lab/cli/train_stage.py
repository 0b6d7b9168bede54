"""Stages `stage1_pixel`, `stage2_alignment`, `stage3_aesthetic`, `baseline_sd`: train one stage."""

from __future__ import annotations

import time
from dataclasses import dataclass

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

import pixart_lab.cli  # noqa: F401
from pixart_lab.models.denoisers import count_parameters
from pixart_lab.diffusion.sampling import save_noise_schedule
from pixart_lab.training.checkpoints import export_network, initialise_from, resolve_init, resume_path
from pixart_lab.training.compute_cost import ComputeCost
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.periodic_eval import PeriodicEvaluation
from pixart_lab.training.wiring import build_callbacks, build_loggers
from pixart_lab.utils.io import write_json

LOGGED = (
    "train/loss", "train/mse", "train/vlb", "train/grad_norm", "train/samples_per_s", "val/loss", "val/ema_loss",
    "cost/flops", "cost/samples", "cost/device_hours",
)  # fmt: skip


def final_metrics(trainer, module, history: MetricHistory, seconds: float, last_n: int = 5) -> dict:
    """Mean of the last ``last_n`` recorded training losses, last validation losses, speed and size."""
    rows = [r for r in history.rows if "loss" in r][-last_n:]
    logged = trainer.callback_metrics
    metrics = {
        "steps": trainer.global_step,
        "seconds": round(seconds, 1),
        "parameters": count_parameters(module.denoiser),
        "train_loss": round(sum(r["loss"] for r in rows) / len(rows), 5) if rows else None,
        "train_mse": round(sum(r["mse"] for r in rows) / len(rows), 5) if rows else None,
    }
    metrics.update({k.replace("/", "_"): round(float(logged[k]), 5) for k in ("val/loss", "val/ema_loss") if k in logged})
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


def fit(cfg: DictConfig, module: L.LightningModule, data: L.LightningDataModule) -> FitResult:
    """Train ``module`` with the configured trainer, loggers, checkpoints, history, cost and, where
    configured, sample grids and periodic evaluation."""
    history = MetricHistory(cfg.outputs.plot, keys=LOGGED, every_n_steps=cfg.outputs.plot_every_n_steps)
    cost = instantiate(cfg.cost)
    quality = instantiate(cfg.periodic_eval) if cfg.get("periodic_eval") else None
    # The cost callback counts each step before the grids and evaluations read its totals.
    measured = [*([instantiate(cfg.samples)] if cfg.get("samples") else []), *([quality] if quality else [])]
    callbacks = build_callbacks(cfg.callbacks, history, instantiate(cfg.checkpoint), cost, *measured)
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.logger), callbacks=callbacks)
    for logger in trainer.loggers:  # the composed config: every run in W&B / CSV says how it was made
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=data, ckpt_path=resume_path(cfg.resume, cfg.run_dir))
    return FitResult(trainer, history, cost, quality)


def write_run_metrics(cfg: DictConfig, module, result: FitResult, start: float, **about) -> dict:
    """``about`` the run, its final metrics, cost and last evaluation, written to ``cfg.outputs.metrics``."""
    metrics = {**about, **final_metrics(result.trainer, module, result.history, time.perf_counter() - start)}
    metrics["cost"] = result.cost.summary()
    if result.quality is not None and result.quality.rows:
        metrics["quality"] = result.quality.rows[-1]
    write_json(cfg.outputs.metrics, metrics)
    print(f"{cfg.run_name}: {metrics}")
    return metrics


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="train_stage")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    denoiser = instantiate(cfg.model.denoiser)
    init = resolve_init(cfg.init, cfg.paths.checkpoints_dir)
    if init is not None:
        initialise_from(denoiser.network, init)
    module = instantiate(cfg.module, denoiser=denoiser)
    result = fit(cfg, module, instantiate(cfg.data_module))

    export_network(module.ema.module.network, cfg.run_dir, module.denoiser.component)
    save_noise_schedule(cfg.run_dir, cfg.model.objective)
    return write_run_metrics(cfg, module, result, start, init=cfg.init, caption=cfg.caption, model=cfg.model.name)


if __name__ == "__main__":
    main()
