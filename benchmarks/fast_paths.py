"""Each training fast path measured before and after, in one run: attention kernel, bf16, fused AdamW,
torch.compile, gradient checkpointing, DataLoader workers, packed shards against per-file loads.

    python benchmarks/fast_paths.py [--steps 10] [--batch 64] [--tokens 64] [--artefacts .] [--skip compile workers]

Model paths time the full training step (``harness.TrainingStep``) of the configured PixArt on random
batches shaped as the cache's; each row changes one thing against the baseline row (``train_stage``'s
defaults: SDPA attention, float32, AdamW's default foreach update, eager, no checkpointing). The
"kept for backward" column sums the activations autograd saves (parameters excluded): what gradient
checkpointing trades time for. Data paths read ``features/<split>`` (``--artefacts``): the loader
alone with 0 and 2 worker processes, and the split's packed safetensors shards against the same
examples written one file each (the per-file layout a cache without shards would have).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from diffusers.models.attention_processor import AttnProcessor
from harness import (
    TrainingStep, artefact_overrides, build_module, common_arguments, compose_config, latent_side, print_table, random_batch, setup,
)  # fmt: skip
from hydra.utils import instantiate
from safetensors.torch import load_file, save_file

from pixart_lab.data.features import read_shard
from pixart_lab.training.throughput import median, time_calls

MODEL_PATHS = {  # name: (label, Hydra overrides, precision, classic attention); "baseline" first
    "baseline": ("baseline (SDPA, fp32, AdamW foreach, eager)", [], "fp32", False),
    "attention": ("attention: classic matmul-softmax (not SDPA)", [], "fp32", True),
    "bf16": ("bf16 autocast", [], "bf16", False),
    "fused": ("AdamW fused", ["module.optimizer.fused=true"], "fp32", False),
    "foreach": ("AdamW for-loop (foreach off)", ["+module.optimizer.foreach=false"], "fp32", False),
    "compile": ("torch.compile", ["module.compile_network=true"], "fp32", False),
    "checkpointing": ("gradient checkpointing", ["module.gradient_checkpointing=true"], "fp32", False),
}


def saved_for_backward_bytes(step: TrainingStep, batch: dict) -> int:
    """Bytes of the tensors autograd keeps for backward during one step, parameters excluded."""
    params = {p.data_ptr() for p in step.module.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(batch)
    return total


def model_paths(args: argparse.Namespace) -> list[list]:
    rows, base = [], None
    for name, (label, overrides, precision, classic_attention) in MODEL_PATHS.items():
        if name in args.skip:
            continue
        torch.manual_seed(0)
        cfg = compose_config([f"backbone.sample_size={latent_side(args.tokens, 2)}", *overrides])
        module = build_module(cfg, args.device).train()
        if classic_attention:
            module.denoiser.network.set_attn_processor(AttnProcessor())
        step = TrainingStep(module, cfg.stage.grad_clip, precision)
        batch = random_batch(args.batch, latent_side(args.tokens, 2), cfg, args.caption_tokens, args.device)
        start = time.perf_counter()
        step(batch)  # the first step compiles (torch.compile) and allocates
        first = time.perf_counter() - start
        seconds = median(time_calls(lambda: step(batch), args.steps, args.warmup, args.device))
        kept = saved_for_backward_bytes(step, batch) if name != "compile" else None
        base = base or seconds
        rows.append([label, f"{seconds:.3f}", f"{seconds / base:.2f}", f"{first:.1f}", "-" if kept is None else f"{kept / 2**20:.0f}"])
    return rows


def loader_seconds(data, num_workers: int, batches: int) -> float:
    """Median seconds per batch of the training loader alone (its first batch, worker start-up, excluded)."""
    data.num_workers = num_workers
    loader, times = data.train_dataloader(), []
    iterator = iter(loader)
    next(iterator)
    for _ in range(batches):
        start = time.perf_counter()
        next(iterator)
        times.append(time.perf_counter() - start)
    return median(times)


def packed_against_files(split_dir: Path, examples: int) -> tuple[float, float, int]:
    """Seconds to read ``examples`` from the packed shards, and from one safetensors file per example."""
    shards = [split_dir / s["file"] for s in json.loads((split_dir / "index.json").read_text())["shards"]]
    start, rows = time.perf_counter(), []
    for path in shards:
        tensors, keys = read_shard(path)
        rows += [{k: v[i].clone() for k, v in tensors.items()} for i in range(len(keys))]
        if len(rows) >= examples:
            break
    packed = time.perf_counter() - start
    rows = rows[:examples]
    with tempfile.TemporaryDirectory() as tmp:
        files = [Path(tmp) / f"{i:06d}.safetensors" for i in range(len(rows))]
        for path, row in zip(files, rows):
            save_file(row, path)
        start = time.perf_counter()
        for path in files:
            load_file(path)
        per_file = time.perf_counter() - start
    return packed, per_file, len(rows)


def main() -> None:
    parser = common_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--artefacts", default=".", help="folder holding features/ (a finished dvc repro)")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--examples", type=int, default=2000, help="examples read in the packed / per-file comparison")
    optional = [*list(MODEL_PATHS)[1:], "workers", "shards"]
    parser.add_argument("--skip", nargs="*", default=[], choices=optional, help="rows to leave out")
    args = parser.parse_args()
    setup(args)
    print(f"\nPixArt training step, batch {args.batch}, {args.tokens} tokens:")
    print_table(["path", "s/step", "x baseline", "first step s", "kept for backward MiB"], model_paths(args))

    cfg = compose_config(artefact_overrides(args.artefacts))
    if "workers" not in args.skip:
        data = instantiate(cfg.data_module, train_split=args.split, val_split=None, batch_size=args.batch)
        data.setup()
        serial = loader_seconds(data, 0, args.steps)
        timings = ((0, serial), (2, loader_seconds(data, 2, args.steps)))
        rows = [[f"{n} workers", f"{s * 1000:.2f}", f"{s / serial:.2f}"] for n, s in timings]
        print(f"Training loader alone, batch {args.batch}, {args.split} split:")
        print_table(["DataLoader", "ms/batch", "x 0 workers"], rows)
    if "shards" not in args.skip:
        packed, per_file, n = packed_against_files(Path(cfg.paths.features_dir) / args.split, args.examples)
        print(f"Reading {n} cached examples of {args.split}:")
        print_table(
            ["layout", "s", "examples/s", "x packed"],
            [["packed shards (safetensors, per bucket)", f"{packed:.3f}", f"{n / packed:.0f}", "1.00"],
             ["one file per example", f"{per_file:.3f}", f"{n / per_file:.0f}", f"{per_file / packed:.2f}"]],
        )  # fmt: skip


if __name__ == "__main__":
    main()
