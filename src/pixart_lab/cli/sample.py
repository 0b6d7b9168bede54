"""Stage `samples`: a grid from a run's EMA transformer, and that pipeline exported for diffusers."""

from __future__ import annotations

import json
import time
from pathlib import Path

import diffusers
import hydra
import torch
from diffusers import DiffusionPipeline, DiTTransformer2DModel
from hydra.utils import instantiate
from omegaconf import DictConfig

import pixart_lab.cli  # noqa: F401
from pixart_lab.data.scene import NUM_CLASSES, class_name
from pixart_lab.diffusion.sampling import assemble_pipeline, export_pipeline, generate
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.training.checkpoints import resolve_init
from pixart_lab.training.images import save_grid
from pixart_lab.utils.io import write_json


def load_transformer(folder: Path) -> torch.nn.Module:
    """The diffusers transformer class named in ``folder/config.json``, loaded from it."""
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(folder).eval()


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="sample")
def main(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    transformer = load_transformer(resolve_init(cfg.source, cfg.paths.checkpoints_dir))
    is_dit = isinstance(transformer, DiTTransformer2DModel)
    text_encoder = None
    if not is_dit:
        text_encoder = FrozenTextEncoder.from_pretrained(cfg.text_encoder.pretrained, max_length=cfg.text_encoder.max_length)
    id2label = {i: class_name(i) for i in range(NUM_CLASSES)}
    vae = load_vae(cfg.vae.pretrained, cfg.vae.get("subfolder"), cfg.vae.get("scaling_factor")).eval()
    pipeline = assemble_pipeline(transformer, vae, instantiate(cfg.sampler.scheduler), text_encoder, id2label)
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
