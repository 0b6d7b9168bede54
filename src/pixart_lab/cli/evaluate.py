"""Stage `evaluate`: FID, CLIP score and compositional accuracy of a run or a diffusers pipeline folder.

FID compares images generated from the captions (stage 1: class labels) of held-out half A with
the real images of half B; the real-vs-real floor is A against B, the score a perfect generator
would get with this many images. CLIP score and GenEval-style compositional accuracy need a
text-conditioned pipeline.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from diffusers import DiTPipeline
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.transforms import load_images
from pixart_lab.diffusion.sampling import generate_many, load_pipeline, resolve_source
from pixart_lab.evaluation.clip_model import ClipImageFeatures, clip_score_model
from pixart_lab.evaluation.compositional import compositional_accuracy
from pixart_lab.evaluation.evaluators import CompositionalEvaluator
from pixart_lab.evaluation.metrics import clean_fid, clip_score, frechet_distance, save_images
from pixart_lab.training.images import save_grid
from pixart_lab.training.wiring import build_loggers
from pixart_lab.utils.io import write_json


def fid_between(cfg: DictConfig, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID with the configured backend: torchmetrics on the CLIP image tower, or clean-fid's Inception."""
    if cfg.eval.fid.backend == "torchmetrics":
        return frechet_distance(real, fake, ClipImageFeatures.from_pretrained(cfg.eval.clip), cfg.eval.fid.batch_size)
    if cfg.eval.fid.backend == "clean_fid":
        with tempfile.TemporaryDirectory() as tmp:
            real_dir, fake_dir = save_images(real, Path(tmp) / "real"), save_images(fake, Path(tmp) / "fake")
            return clean_fid(real_dir, fake_dir, cfg.eval.fid.inception_dir)
    raise ValueError(f"eval.fid.backend={cfg.eval.fid.backend!r}: expected torchmetrics or clean_fid")


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, numbers only (what experiment loggers take)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = value
    return flat


@entry_point("evaluate")
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
    images, records = load_images(instantiate(cfg.data.splits.heldout).records()[: 2 * n], cfg.data.image_size, cfg.data.image_size)
    if len(records) < 2 * n:
        raise ValueError(f"eval.fid.images={n} needs {2 * n} held-out images, found {len(records)}")
    half_a, half_b, records_a = images[:n], images[n:], records[:n]
    conditions = [r.dense_caption for r in records_a] if text_conditioned else [r.label for r in records_a]
    fake = generate(conditions)
    fid, floor = fid_between(cfg, half_b, fake), fid_between(cfg, half_b, half_a)
    metrics = {
        "source": cfg.source,
        "sampler": {"name": cfg.sampler.name, "steps": cfg.sampler.steps, "guidance_scale": cfg.sampler.guidance_scale},
        "size": list(fake.shape[-2:]),
        "fid": {"generated": fid, "real_vs_real_floor": floor, "over_floor": fid / floor, "images": n, "backend": cfg.eval.fid.backend},
    }
    grid = fake[: cfg.grid_images]
    if text_conditioned:
        clip_fn = clip_score_model(cfg.eval.clip)
        metrics["clip_score"] = {"generated": clip_score(fake, conditions, clip_fn), "real": clip_score(half_a, conditions, clip_fn)}
        if cfg.eval.compositional:
            evaluator = CompositionalEvaluator.load(cfg.eval.evaluators_dir)
            composed = generate([p.prompt for p in evaluator.prompts])
            detections = evaluator.probe.read(composed)
            metrics["compositional"] = compositional_accuracy(evaluator.prompts, detections, evaluator.valid_attributes)
            metrics["compositional"]["prompts"] = len(evaluator.prompts)
            grid = composed[:: max(1, len(composed) // cfg.grid_images)][: cfg.grid_images]  # every task

    loggers = build_loggers(cfg.logger)
    save_grid(grid.float() / 127.5 - 1, cfg.outputs.grid, cfg.nrow, loggers)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        logger.log_metrics(flatten(metrics, "eval/"), step=0)
        logger.finalize("success")
    write_json(cfg.outputs.metrics, metrics)
    print(f"evaluate {cfg.source}: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
