"""Stage `evaluate`: FID, CLIP score and compositional accuracy of a run or a diffusers pipeline folder.

The metrics are those of :mod:`pixart_lab.evaluation.suite`: FID of images generated from held-out
half A's captions (stage 1: class labels) against half B's real images, beside the real-vs-real
floor; CLIP score and GenEval-style compositional accuracy for text-conditioned pipelines.
"""

from __future__ import annotations

import time

import hydra
import torch
from diffusers import DiTPipeline
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import pixart_lab.cli  # noqa: F401
from pixart_lab.diffusion.sampling import generate_many, load_pipeline, resolve_source
from pixart_lab.evaluation.suite import HeldOutHalves, QualitySuite
from pixart_lab.training.images import save_grid
from pixart_lab.training.wiring import build_loggers
from pixart_lab.utils.io import write_json


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, numbers only (what experiment loggers take)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


def publish(cfg: DictConfig, metrics: dict, loggers: list, prefix: str) -> None:
    """Send the config and the numeric ``metrics`` (under ``prefix``) to every logger; write ``cfg.outputs.metrics``."""
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(flatten(metrics, prefix), step=0)
        logger.finalize("success")
    write_json(cfg.outputs.metrics, metrics)


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    pipeline = load_pipeline(
        resolve_source(cfg.source, cfg.paths.checkpoints_dir), instantiate(cfg.sampler.scheduler), cfg.vae, cfg.text_encoder
    )
    text_conditioned = not isinstance(pipeline, DiTPipeline)
    size = tuple(cfg.size) if cfg.size and text_conditioned else (None, None)
    sampling = dict(steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance_scale, height=size[0], width=size[1])
    generate = lambda conditions: generate_many(pipeline, conditions, cfg.eval.batch_size, seed=cfg.seed, **sampling)  # noqa: E731

    n = cfg.eval.fid.images
    heldout = HeldOutHalves.load(instantiate(cfg.data.splits.heldout).records(), n, cfg.data.image_size, progress=True)
    suite = QualitySuite(heldout, cfg.eval.fid, cfg.eval.clip, cfg.eval.evaluators_dir if cfg.eval.compositional else None)
    results, shown = suite(generate, text_conditioned)
    metrics = {
        "source": cfg.source,
        "sampler": {"name": cfg.sampler.name, "steps": cfg.sampler.steps, "guidance_scale": cfg.sampler.guidance_scale},
        "size": results["size"],
        "fid": {"generated": results["fid"], "real_vs_real_floor": suite.floor(), "images": n, "backend": cfg.eval.fid.backend},
    }
    metrics["fid"]["over_floor"] = metrics["fid"]["generated"] / metrics["fid"]["real_vs_real_floor"]
    if "clip_score" in results:
        metrics["clip_score"] = {"generated": results["clip_score"], "real": suite.real_clip_score()}
    if "compositional" in results:
        metrics["compositional"] = results["compositional"]
    grid = shown[:: max(1, len(shown) // cfg.grid_images)][: cfg.grid_images]  # every task of the prompt set

    loggers = build_loggers(cfg.logger)
    save_grid(grid.float() / 127.5 - 1, cfg.outputs.grid, cfg.nrow, loggers)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    publish(cfg, metrics, loggers, "eval/")
    print(f"evaluate {cfg.source}: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
