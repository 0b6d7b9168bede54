"""Peak training memory of PixArt-XL/2 at 256 / 512 / 1024 px with gradient checkpointing, measured without a GPU.

Method: PyTorch's ``MemTracker`` (torch.distributed._tools.mem_tracker) follows every tensor a training
step allocates and frees (parameters, gradients, optimiser states, activations, temporaries) while
the step runs under ``FakeTensorMode``: shapes and dtypes are real, no memory is allocated, so the
0.6B-parameter model at 1024 px runs on a laptop CPU. Two steps are taken (forward, backward, AdamW
step, zero_grad), so the second one sees the optimiser states. Assumptions, as the project trains:
float32 weights, gradients and AdamW states (Lightning ``bf16-mixed``: bf16 autocast), diffusers'
gradient checkpointing of every transformer block, captions of 120 T5-XXL tokens (4096 wide),
cached VAE latents (no VAE / T5 in memory), plus the EMA copy of the weights (float32) that the
training module keeps, added from the parameter count. The CPU kernels stand in for CUDA's (both
run flash-style attention that keeps no attention matrix); allocator fragmentation and the CUDA
context (~0.5-1 GB) are not included.

    python benchmarks/memory_xl2.py                      # XL/2 at the official per-GPU batch sizes
    python benchmarks/memory_xl2.py --validate           # fake vs real tensors on a small model (CPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import time

import torch
from diffusers import PixArtTransformer2DModel
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

GIB = 2**30
# PixArt-XL/2 as diffusers ships it; 1024 px is the multi-scale (micro-conditioned) model.
XL2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, patch_size=2,
    caption_channels=4096, cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
)  # fmt: skip
# Per-GPU batch sizes of the official configs (configs/t2i_js_config/PixArt_xl2_img{256_SAM,512_internal,1024_internalms}.py).
OFFICIAL_BATCH = {256: 176, 512: 38, 1024: 12}
CATEGORIES = {"Parameter": "params", "Gradient": "grads", "Optstate": "adamw", "Activation": "activations", "Temp": "temporaries"}


def training_step_memory(resolution: int, batch: int, fake: bool = True, **overrides) -> dict[str, float]:
    """Peak bytes by category over two bf16-autocast training steps of a PixArt at ``resolution`` px."""
    config = {**XL2, **overrides, "sample_size": resolution // 8, "use_additional_conditions": resolution == 1024}
    latent = resolution // 8
    mode = FakeTensorMode() if fake else contextlib.nullcontext()
    with mode:
        torch.manual_seed(0)
        model = PixArtTransformer2DModel(**config).train()
        model.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.03, eps=1e-10)
        x = torch.randn(batch, config["in_channels"], latent, latent)
        caption = torch.randn(batch, 120, config["caption_channels"])
        mask = torch.ones(batch, 120)
        t = torch.randint(0, 1000, (batch,))
        conditions = {"resolution": torch.full((batch, 2), float(resolution)), "aspect_ratio": torch.ones(batch, 1)}
        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        with tracker:
            for _ in range(2):
                tracker.reset_mod_stats()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model(x, encoder_hidden_states=caption, encoder_attention_mask=mask, timestep=t,
                                added_cond_kwargs=conditions).sample  # fmt: skip
                out.float().pow(2).mean().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    figures = {name: peak.get(next(k for k in peak if getattr(k, "value", k) == key), 0) for key, name in CATEGORIES.items()}
    figures["tracked_total"] = peak["Total"]
    figures["parameters"] = sum(p.numel() for p in model.parameters())
    return figures


def table(rows: list[dict]) -> str:
    lines = [
        "| resolution | tokens | batch / GPU | weights | grads | AdamW | EMA | activations + temporaries | peak total | per sample |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ema = 4 * r["parameters"]
        total = r["tracked_total"] + ema
        acts = r["activations"] + r["temporaries"]
        lines.append(
            f"| {r['resolution']} px | {(r['resolution'] // 16) ** 2} | {r['batch']} | {r['params'] / GIB:.2f} | "
            f"{r['grads'] / GIB:.2f} | {r['adamw'] / GIB:.2f} | {ema / GIB:.2f} | {acts / GIB:.2f} | {total / GIB:.2f} GiB | "
            f"{acts / r['batch'] / GIB:.3f} |"
        )
    return "\n".join(lines)


def _rss_child(resolution: int, batch: int, overrides: dict) -> None:
    """Real tensors in this process: peak resident memory of the step minus that before it (bytes)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = training_step_memory(resolution, batch, fake=False, **overrides)
    figures["rss_peak_increase"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    print(json.dumps(figures))


def validate(resolution: int = 256, batch: int = 8, **overrides) -> dict:
    """The fake-tensor figures of a small model against the same step on real tensors: MemTracker's
    accounting of real tensors, and the process' peak resident memory (a fresh interpreter, glibc told
    to return every large block to the system so that resident memory follows live tensors)."""
    fake = training_step_memory(resolution, batch, fake=True, **overrides)
    code = f"import benchmarks.memory_xl2 as m; m._rss_child({resolution}, {batch}, {overrides!r})"
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": ".", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**__import__("os").environ, **env})
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    real = json.loads(done.stdout.strip().splitlines()[-1])
    return {"fake": fake, "real": real}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument("--batch", type=int, nargs="+", help="per resolution (default: the official per-GPU sizes)")
    parser.add_argument("--validate", action="store_true", help="fake vs real tensors on a 4-layer model at 256 px")
    args = parser.parse_args()
    if args.validate:
        start = time.perf_counter()
        result = validate(256, 8, num_layers=4)
        fake, real = result["fake"], result["real"]
        print(f"4-layer XL-width PixArt, 256 px, batch 8 ({time.perf_counter() - start:.0f} s):")
        for key in ("params", "grads", "adamw", "activations", "temporaries", "tracked_total"):
            print(f"  {key:>13}: fake {fake[key] / GIB:.3f} GiB   real {real[key] / GIB:.3f} GiB")
        print(f"  peak resident memory increase of the real step: {real['rss_peak_increase'] / GIB:.3f} GiB")
        return
    rows = []
    for i, resolution in enumerate(args.resolutions):
        batch = args.batch[i] if args.batch else OFFICIAL_BATCH[resolution]
        start = time.perf_counter()
        figures = training_step_memory(resolution, batch)
        rows.append({"resolution": resolution, "batch": batch, **figures})
        print(f"{resolution} px, batch {batch}: {figures['tracked_total'] / GIB:.2f} GiB tracked "
              f"({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    print(f"\nPixArt-XL/2 ({rows[0]['parameters']:,} parameters at 256 px), GiB:\n")
    print(table(rows))


if __name__ == "__main__":
    main()
