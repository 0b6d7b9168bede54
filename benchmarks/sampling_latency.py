"""Seconds per image at 20 DPM-Solver++ steps: the project's sampler against plain diffusers on the same weights.

    python benchmarks/sampling_latency.py [--pipeline exports/pixart_stage3] [--steps 5] [--batch 1 4]

The project samples through diffusers' own ``PixArtAlphaPipeline`` (``pixart_lab.diffusion.sampling``):
``load_pipeline`` swaps in the configured scheduler (``conf/sampler/dpm_solver.yaml``) on the
folder's noise schedule, and ``generate`` calls the pipeline with caption cleaning and resolution
binning off and returns a tensor. The plain arm is ``PixArtAlphaPipeline.from_pretrained(folder)``
with its saved scheduler, called with the same prompts, seed, size, steps and guidance; it keeps
diffusers' default PIL output. Resolution binning is off in both (on, diffusers would resize to its
256-1024 px tables: a different image size, a different amount of work), and so is caption cleaning
(it needs optional packages and skips itself without them). The arms alternate call by call so that
both see the same machine load. Target: project <= 1.0 x plain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from diffusers import PixArtAlphaPipeline
from harness import common_arguments, compose_config, print_table, setup
from hydra.utils import instantiate

from pixart_lab.diffusion.sampling import generate, load_pipeline
from pixart_lab.training.throughput import median, time_calls


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), steps=5)
    parser.add_argument("--pipeline", type=Path, default=Path("exports/pixart_stage3"), help="a diffusers PixArt pipeline folder")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="images per call")
    parser.add_argument("--sampling-steps", type=int, default=20)
    args = parser.parse_args()
    setup(args)
    cfg = compose_config(["sampler=dpm_solver", "stage=3_aesthetic"])  # the exported model's stage and resolution
    project = load_pipeline(args.pipeline, instantiate(cfg.sampler.scheduler)).to(args.device)
    plain = PixArtAlphaPipeline.from_pretrained(args.pipeline).to(args.device)
    plain.set_progress_bar_config(disable=True)
    height, width = cfg.stage.grid.size  # what stage 3 trained at and samples (not sample_size x 4: 512 px)
    theirs_config = plain.scheduler.config
    differs = {k: (v, theirs_config.get(k)) for k, v in project.scheduler.config.items() if not k.startswith("_") and theirs_config.get(k) != v}
    print(f"project: {type(project).__name__} + {type(project.scheduler).__name__}; plain: {type(plain).__name__} + "
          f"{type(plain.scheduler).__name__}; scheduler settings that differ (project, plain): {differs or 'none'}")  # fmt: skip
    print(f"{height}x{width} px, {args.sampling_steps} steps, guidance {cfg.sampler.guidance_scale}\n")

    rows = []
    for batch in args.batch:
        prompts = [cfg.prompts.texts[i % len(cfg.prompts.texts)] for i in range(batch)]
        sampling = dict(steps=args.sampling_steps, guidance_scale=cfg.sampler.guidance_scale, seed=0, height=height, width=width)
        ours = lambda: generate(project, prompts, **sampling)  # noqa: E731
        theirs = lambda: plain(  # noqa: E731
            prompt=prompts, negative_prompt="", num_inference_steps=args.sampling_steps,
            guidance_scale=cfg.sampler.guidance_scale, generator=torch.Generator("cpu").manual_seed(0), height=height, width=width,
            clean_caption=False, use_resolution_binning=False,
        )  # fmt: skip
        times = {"project": [], "plain": []}
        for _ in range(args.warmup):
            ours(), theirs()
        for _ in range(args.steps):  # alternating: A B A B ...
            times["project"] += time_calls(ours, 1, 0, args.device)
            times["plain"] += time_calls(theirs, 1, 0, args.device)
        project_s, plain_s = median(times["project"]), median(times["plain"])
        rows.append([batch, f"{plain_s / batch:.3f}", f"{project_s / batch:.3f}", f"{project_s / plain_s:.3f}"])
    print_table(["images per call", "plain diffusers s/image", "project s/image", "project / plain"], rows)


if __name__ == "__main__":
    main()
