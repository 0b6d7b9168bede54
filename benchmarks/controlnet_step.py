"""Seconds per training step: ControlNet (base frozen) against full stage-2 training, same model and batch.

    python benchmarks/controlnet_step.py [--steps 20] [--batch 64] [--layers 3]

Both arms run in this process on the embedded tiny backbone with random latents and captions; forward,
hybrid loss, backward and AdamW step are timed. Run it on a quiet machine: on one shared by many jobs
the two arms see different contention (readings of 0.63x and 1.49x there, against 1.10x in FLOPs).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from omegaconf import OmegaConf

from pixart_lab.diffusion.iddpm_loss import hybrid_loss
from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.models.controlnet import PixArtControlNet, controlled_forward
from pixart_lab.training.throughput import median, time_calls

BACKBONE = Path(__file__).resolve().parents[1] / "conf" / "backbone" / "tiny.yaml"


def seconds_per_step(forward, parameters, steps: int, batch: int, schedule: NoiseSchedule) -> float:
    """Median seconds of one training step (after two untimed ones) of ``forward``'s hybrid loss."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    x0, caption = torch.randn(batch, 4, 16, 16), torch.randn(batch, 30, 128)
    mask, control = torch.ones(batch, 30), torch.randn(batch, 4, 16, 16)

    def step() -> None:
        t = torch.randint(0, 1000, (batch,))
        noise = torch.randn_like(x0)
        x_t = schedule.q_sample(x0, t, noise)
        loss = hybrid_loss(schedule, forward(x_t, t, caption, mask, control), x0, x_t, t, noise, 0.001)["loss"].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median(time_calls(step, steps, warmup=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    b = OmegaConf.load(BACKBONE)
    base = PixArtTransformer2DModel(
        num_attention_heads=b.num_attention_heads, attention_head_dim=b.attention_head_dim, num_layers=b.num_layers,
        patch_size=b.patch_size, in_channels=b.in_channels, out_channels=b.out_channels, sample_size=b.sample_size,
        cross_attention_dim=b.hidden_size, caption_channels=b.caption_channels, interpolation_scale=1,
    )  # fmt: skip
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    full = partial(controlled_forward, base, None)
    stage2 = seconds_per_step(full, base.parameters(), args.steps, args.batch, schedule)
    controlnet = PixArtControlNet.from_transformer(base, args.layers)
    base.requires_grad_(False)
    controlled = seconds_per_step(partial(controlled_forward, base, controlnet), controlnet.parameters(), args.steps, args.batch, schedule)
    print(f"batch {args.batch}, {args.threads} threads, median of {args.steps} steps:")
    print(f"  stage-2 training (all {sum(p.numel() for p in base.parameters()):,} parameters): {stage2:.3f} s/step")
    print(f"  ControlNet training ({sum(p.numel() for p in controlnet.parameters()):,} trainable, {args.layers} copies): "
          f"{controlled:.3f} s/step = {controlled / stage2:.2f} x stage 2")  # fmt: skip


if __name__ == "__main__":
    main()
