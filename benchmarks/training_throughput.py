"""Training samples/s and MFU of the embedded PixArt and the SD-class baseline; step time against tokens and model size.

    python benchmarks/training_throughput.py [--steps 10] [--batch 64] [--tokens 64]
        [--scaling-tokens 64 256 1024] [--scaling-batch 8] [--sizes 6x2 12x4 12x8]
    # PixArt-XL/2 at 256 px (32x32 latents = 256 tokens), bf16, on a GPU (empty lists skip the sweeps):
    python benchmarks/training_throughput.py --device cuda --precision bf16 --backbone xl2 --models pixart \
        --tokens 256 --batch 176 --caption-tokens 120 --peak-size 8192 --scaling-tokens --sizes

Every arm is the full training step of ``train_stage`` (the configured ``DiffusionModule``'s loss,
backward, clipping, AdamW, EMA: ``harness.TrainingStep``) on random batches shaped as the feature
cache's. FLOPs per sample come from torch's flop counter (``pixart_lab.evaluation.cost.flops_of``),
the peak from a square matmul timed on this device in the run's precision, so
``MFU = FLOPs/sample x samples/s / peak``. Sizes are ``LAYERSxHEADS`` at PixArt's head width of 72.
"""

from __future__ import annotations

import argparse

import torch
from harness import (
    PRECISIONS, TrainingStep, build_module, common_arguments, compose_config, latent_side, print_table, random_batch, setup,
)  # fmt: skip

from pixart_lab.evaluation.cost import flops_of
from pixart_lab.models.denoisers import count_parameters
from pixart_lab.training.throughput import matmul_peak_flops, median, mfu, time_calls


def measure(overrides: list[str], batch: int, tokens: int, args: argparse.Namespace) -> dict:
    """Parameters, FLOPs per sample and median seconds of one training step of the configured model."""
    cfg = compose_config([f"backbone={args.backbone}", *overrides])
    module = build_module(cfg, args.device).train()
    step = TrainingStep(module, cfg.stage.grad_clip, args.precision)
    data = random_batch(batch, latent_side(tokens, cfg.backbone.patch_size), cfg, args.caption_tokens, args.device)
    flops = flops_of(lambda: step(data)) / batch
    seconds = median(time_calls(lambda: step(data), args.steps, args.warmup, args.device))
    return {"parameters": count_parameters(module.denoiser), "flops": flops, "seconds": seconds, "samples_per_s": batch / seconds}


def row(label: str, tokens: int, batch: int, m: dict, peak: float, base: dict) -> list:
    return [
        label, f"{m['parameters'] / 1e6:.2f} M", tokens, batch, f"{m['flops'] / 1e9:.3f}", f"{m['seconds']:.3f}",
        f"{m['samples_per_s']:.1f}", f"{m['flops'] * m['samples_per_s'] / 1e9:.1f}",
        f"{100 * mfu(m['flops'], m['samples_per_s'], peak):.1f} %", f"{m['seconds'] / base['seconds']:.2f}",
        f"{m['flops'] / base['flops']:.2f}",
    ]  # fmt: skip


HEADERS = [
    "model", "parameters", "tokens", "batch", "GFLOP/sample", "s/step", "samples/s", "GFLOP/s", "MFU", "time ratio", "FLOP ratio",
]  # fmt: skip


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--models", nargs="*", default=["pixart", "unet_sd"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64, help="image tokens of the model comparison (a square)")
    parser.add_argument("--caption-tokens", type=int, default=32, help="caption length (the embedded cache: up to ~30)")
    parser.add_argument("--scaling-tokens", type=int, nargs="*", default=[64, 256, 1024])
    parser.add_argument("--scaling-batch", type=int, default=8)
    parser.add_argument("--sizes", nargs="*", default=["6x2", "12x4", "12x8"], help="LAYERSxHEADS (72 wide heads)")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument("--peak-size", type=int, default=2048, help="side of the matmul that measures the peak")
    args = parser.parse_args()
    setup(args)
    dtype = PRECISIONS[args.precision] or torch.float32
    peak = matmul_peak_flops(args.peak_size, dtype, args.device)
    print(f"peak: {peak / 1e9:.1f} GFLOP/s ({args.peak_size}^2 {args.precision} matmul); precision {args.precision}\n")

    if args.models:
        print(f"Model comparison, backbone {args.backbone}, batch {args.batch}, {args.tokens} tokens:")
        results = {name: measure([f"model={name}"], args.batch, args.tokens, args) for name in args.models}
        base = results[args.models[0]]
        print_table(HEADERS, [row(name, args.tokens, args.batch, m, peak, base) for name, m in results.items()])
    if args.scaling_tokens:
        print(f"PixArt step time against tokens, backbone {args.backbone}, batch {args.scaling_batch}:")
        sweep = [(t, measure(["model=pixart", f"backbone.sample_size={latent_side(t, 2)}"], args.scaling_batch, t, args))
                 for t in args.scaling_tokens]  # fmt: skip
        print_table(HEADERS, [row("pixart", t, args.scaling_batch, m, peak, sweep[0][1]) for t, m in sweep])
    if args.sizes:
        tokens = args.scaling_tokens[0] if args.scaling_tokens else args.tokens
        print(f"PixArt step time against model size, {tokens} tokens, batch {args.scaling_batch}:")
        sweep = []
        for size in args.sizes:
            layers, heads = (int(x) for x in size.split("x"))
            overrides = ["model=pixart", f"backbone.num_layers={layers}", f"backbone.num_attention_heads={heads}",
                         f"backbone.hidden_size={heads * 72}", f"backbone.sample_size={latent_side(tokens, 2)}"]  # fmt: skip
            sweep.append((size, measure(overrides, args.scaling_batch, tokens, args)))
        print_table(HEADERS, [row(f"pixart {s}", tokens, args.scaling_batch, m, peak, sweep[0][1]) for s, m in sweep])


if __name__ == "__main__":
    main()
