"""Stage `evaluate`: FID, CLIP score and compositional accuracy of a run or a diffusers pipeline folder.

The metrics are those of :mod:`pixart_lab.evaluation.suite`: FID of images generated from held-out
half A's captions (stage 1: class labels) against half B's real images, beside the real-vs-real
floor; CLIP score and GenEval-style compositional accuracy for text-conditioned pipelines (from the
template prompts, beside the same images judged against shuffled prompts of their task, and from
the prompts' free paraphrases), each beside its ceiling (``metrics/ceiling.json``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from diffusers import DiTPipeline
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.diffusion.sampling import generate_many, load_pipeline, resolve_source
from pixart_lab.evaluation.suite import HeldOutHalves, QualitySuite
from pixart_lab.training.images import save_grid
from pixart_lab.training.wiring import build_loggers, publish_metrics

log = logging.getLogger(__name__)


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
    heldout = HeldOutHalves.load(instantiate(cfg.data.splits.heldout).records(), n, cfg.data.image_size, progress=True)
    evaluators_dir = cfg.eval.evaluators_dir if cfg.eval.compositional else None
    suite = QualitySuite(heldout, cfg.eval.fid, cfg.eval.clip, evaluators_dir, free_phrasing=cfg.eval.free_phrasing)
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
        metrics["compositional"] = {**results["compositional"], "shuffled_prompts": results["compositional_shuffled"]}
        if "compositional_free_phrasing" in results:
            metrics["compositional"]["free_phrasing"] = results["compositional_free_phrasing"]
    if cfg.ceiling and Path(cfg.ceiling).is_file():  # what a perfect generator through this VAE scores
        ceiling = json.loads(Path(cfg.ceiling).read_text())
        metrics["ceiling"] = {k: ceiling[k] for k in ("fid", "clip_score", "compositional")}
    elif cfg.ceiling:
        log.warning("no ceiling beside these figures: %s is missing (run the ceiling stage)", cfg.ceiling)
    grid = shown[:: max(1, len(shown) // cfg.grid_images)][: cfg.grid_images]  # every task of the prompt set

    loggers = build_loggers(cfg.logger)
    save_grid(grid.float() / 127.5 - 1, cfg.outputs.grid, cfg.nrow, loggers)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    publish_metrics(metrics, cfg.outputs.metrics, loggers, prefix="eval/", step=0, config=cfg)
    print(f"evaluate {cfg.source}: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
