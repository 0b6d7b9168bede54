"""Stage `samples`: a grid from a run's EMA transformer, and that pipeline exported for diffusers."""

from __future__ import annotations

import time

from diffusers import DiffusionPipeline, DiTPipeline
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.diffusion.sampling import export_pipeline, generate, load_pipeline, resolve_source
from pixart_lab.training.images import save_grid
from pixart_lab.utils.io import write_json


@entry_point("sample")
def main(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    folder = resolve_source(cfg.source, cfg.paths.checkpoints_dir)
    pipeline = load_pipeline(folder, instantiate(cfg.sampler.scheduler), cfg.vae, cfg.text_encoder)
    is_dit = isinstance(pipeline, DiTPipeline)
    conditions = list(cfg.prompts.classes if is_dit else cfg.prompts.texts)
    sampling = dict(steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance_scale, seed=cfg.seed)
    size = (None, None) if is_dit else tuple(cfg.size)
    images = generate(pipeline, conditions, **sampling, height=size[0], width=size[1])
    save_grid(images, cfg.outputs.grid, cfg.nrow)
    metrics = {"source": cfg.source, "sampler": cfg.sampler.name, **sampling, "images": len(images), "size": list(images.shape[-2:])}

    if cfg.export_dir:
        export_pipeline(pipeline, cfg.export_dir)
        reloaded = DiffusionPipeline.from_pretrained(cfg.export_dir)  # plain diffusers, as a user loads it
        again = generate(reloaded, conditions, **sampling, height=size[0], width=size[1])
        metrics.update(export_dir=cfg.export_dir, export_max_abs_diff=float((again - images).abs().max()))
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    write_json(cfg.outputs.metrics, metrics)
    print(f"samples: {cfg.outputs.grid} {metrics}")
    return metrics


if __name__ == "__main__":
    main()
