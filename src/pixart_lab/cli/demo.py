"""``pixart-lab demo source=<run | pipeline folder>``: the Gradio page on http://host:port."""

from __future__ import annotations

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.diffusion.sampling import load_pipeline, resolve_source


@entry_point("demo")
def main(cfg: DictConfig) -> None:
    folder = resolve_source(cfg.source, cfg.paths.checkpoints_dir)  # a missing one: one line naming it
    try:
        from pixart_lab.demo.app import build_demo, serve
    except ModuleNotFoundError as error:
        raise SystemExit(f"pixart-lab demo needs the demo extra ({error.name} is missing): pip install -e '.[demo]'") from None
    from pixart_lab.demo.generator import DemoModel, Limits, sampler_choices, size_choices

    torch.set_num_threads(cfg.num_threads)
    samplers = sampler_choices(cfg.samplers)
    pipeline = load_pipeline(folder, next(iter(samplers.values())).scheduler, cfg.vae, cfg.text_encoder)
    sizes = size_choices(pipeline, cfg.aspect_ratios, cfg.size)
    model = DemoModel(pipeline, samplers, sizes, Limits(**{k: tuple(v) for k, v in cfg.limits.items()}), cfg.source)
    serve(build_demo(model, list(cfg.examples), cfg.seed, cfg.gallery_images), cfg.host, cfg.port)


if __name__ == "__main__":
    main()
