"""Stages `stage1_pixel`, `stage2_alignment`, `stage3_aesthetic`: train one curriculum stage."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.models.denoisers import count_parameters
from pixart_lab.training.checkpoints import WEIGHTS_FILE, export_transformer, initialise_from, resolve_init, resume_path
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.resume import RunFingerprint, WriteFingerprint, decide_resume, sha256_files
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


@entry_point("train_stage")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    init = resolve_init(cfg.init, cfg.paths.checkpoints_dir)
    data = instantiate(cfg.data_module)
    fingerprint = RunFingerprint.of(
        cfg, cfg.resume_check.config_keys, cfg.resume_check.ignore,
        features=sha256_files(data.input_files(), data.features_dir),
        init=sha256_files([init / WEIGHTS_FILE]) if init is not None else None,
    )  # fmt: skip
    resume = decide_resume(resume_path(cfg.resume, cfg.run_dir), fingerprint, cfg.trainer.max_steps, cfg.resume != "last")
    denoiser = instantiate(cfg.model.denoiser)
    if init is not None:
        initialise_from(denoiser.transformer, init)
    module = instantiate(cfg.module, denoiser=denoiser)

    history = MetricHistory(cfg.outputs.plot, keys=LOGGED, every_n_steps=cfg.outputs.plot_every_n_steps)
    cost, samples = instantiate(cfg.cost), instantiate(cfg.samples)
    # cost before history: the history's row of a step then holds that step's cost/* values.
    callbacks = build_callbacks(cfg.callbacks, cost, history, instantiate(cfg.checkpoint), samples, WriteFingerprint(fingerprint))
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.logger), callbacks=callbacks)
    for logger in trainer.loggers:  # the composed config: every run in W&B / CSV says how it was made
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    trainer.fit(module, datamodule=data, ckpt_path=resume.path)
    if resume.finished:  # Lightning restores it but runs no loop and no train-end hooks: write their outputs
        for callback in (history, samples, cost):
            callback.on_train_end(trainer, module)

    export_transformer(module.ema.module.transformer, cfg.run_dir)
    metrics = {"init": cfg.init, "caption": cfg.caption, **final_metrics(trainer, module, history, time.perf_counter() - start)}
    metrics["cost"] = cost.summary()
    write_json(cfg.outputs.metrics, metrics)
    print(f"{cfg.run_name}: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
