"""Stage `evaluate_controlnet`: control fidelity, controlled vs uncontrolled, a grid, and the export."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.edges import control_image
from pixart_lab.data.transforms import load_images, uint8_to_model_range
from pixart_lab.diffusion.control_sampling import (
    control_latents,
    export_controlled_pipeline,
    generate_many_with_control,
    load_controlled_pipeline,
)
from pixart_lab.diffusion.sampling import load_pipeline, resolve_source
from pixart_lab.evaluation.control_fidelity import control_fidelity
from pixart_lab.models.controlnet import PixArtControlNet
from pixart_lab.training.images import save_grid
from pixart_lab.training.wiring import build_loggers, publish_metrics


@entry_point("evaluate_controlnet")
def main(cfg: DictConfig) -> dict:
    torch.set_num_threads(cfg.num_threads)
    start, ev = time.perf_counter(), cfg.controlnet_eval
    scheduler = instantiate(cfg.sampler.scheduler)
    pipeline = load_pipeline(resolve_source(cfg.base, cfg.paths.checkpoints_dir), scheduler, cfg.vae, cfg.text_encoder)
    controlnet = PixArtControlNet.from_pretrained(cfg.controlnet_dir).eval()
    detector = instantiate(cfg.control.detector)

    size = cfg.data.image_size
    images, records = load_images(instantiate(cfg.data.splits.heldout).records()[: ev.images], size, size, progress=False)
    edges, prompts = detector(images), [r.dense_caption for r in records]
    control = control_latents(pipeline, edges)
    sampling = dict(steps=cfg.sampler.steps, guidance_scale=cfg.sampler.guidance_scale, height=size, width=size, seed=cfg.seed)
    controlled = generate_many_with_control(pipeline, controlnet, prompts, control, ev.batch_size, **sampling)
    uncontrolled = generate_many_with_control(pipeline, None, prompts, None, ev.batch_size, **sampling)
    metrics = {
        "base": cfg.base, "control": cfg.control.name, "num_layers": controlnet.config.num_layers,
        "sampler": {"name": cfg.sampler.name, "steps": cfg.sampler.steps, "guidance_scale": cfg.sampler.guidance_scale},
        "tolerance_px": ev.tolerance,
        "controlled": control_fidelity(controlled, edges, detector, ev.tolerance),
        "uncontrolled": control_fidelity(uncontrolled, edges, detector, ev.tolerance),
        # Chance level: the controlled images against the edges of the next held-out image.
        "controlled_vs_other_edges": control_fidelity(controlled, edges.roll(1, dims=0), detector, ev.tolerance),
    }  # fmt: skip

    loggers = build_loggers(cfg.logger)
    k = min(ev.grid_images, len(images))
    rows = [control_image(edges[:k]), uint8_to_model_range(controlled[:k]), uint8_to_model_range(uncontrolled[:k])]
    save_grid(torch.cat(rows), cfg.outputs.grid, k, loggers)
    if cfg.export_dir:
        export_controlled_pipeline(pipeline, controlnet, cfg.export_dir)
        reloaded, reloaded_controlnet = load_controlled_pipeline(cfg.export_dir, scheduler)
        n = min(ev.batch_size, len(prompts))  # the first batch, with its own seed, as generated above
        again = generate_many_with_control(reloaded, reloaded_controlnet, prompts[:n], control[:n], n, progress=False, **sampling)
        metrics.update(export_dir=cfg.export_dir, export_max_abs_diff=int((again.int() - controlled[:n].int()).abs().max()))
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    publish_metrics(metrics, cfg.outputs.metrics, loggers, prefix="controlnet/", step=0, config=cfg)
    print(f"evaluate_controlnet: {metrics}")
    return metrics


if __name__ == "__main__":
    main()
