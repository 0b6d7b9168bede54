"""Data at scale: WebDataset shard reading, streamed feature batches, extraction over 1 and 2 workers.

    python benchmarks/streaming_data.py [--samples 100000] [--extract-samples 2048] [--runs 3]

Builds, under a temporary folder that is removed at the end:
- ``--samples`` small synthetic samples (JPEG of 16 to 32 px in three aspect ratios, a caption) in
  img2dataset-style tar shards, and lists them with ``WebDatasetReader`` (samples/s);
- their feature cache in the packed shard layout (random tensors of the embedded default's shapes:
  packing and reading are measured, not the VAE), read by the in-memory and the streaming
  DataModule, the latter with 0 and 2 loader workers (samples/s, bucket-homogeneous batches);
- the real extraction (a small VAE and T5 built on the spot) of the first ``--extract-samples``
  tar samples by 1 and by 2 worker processes (images/s of each worker's encoding, and overall).
Each figure is the median of ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from pixart_lab.data.datamodule import FeatureDataModule
from pixart_lab.data.extraction_workers import ExtractionJob, merge_parts, run_local_workers
from pixart_lab.data.features import SplitSpec, cache_split
from pixart_lab.data.images import ImageLimits
from pixart_lab.data.records import SkipReport
from pixart_lab.data.streaming import StreamingFeatureDataModule
from pixart_lab.data.webdataset import WebDatasetReader, write_shard
from pixart_lab.utils.io import write_json

SHAPES = [(16, 16), (12, 24), (24, 12)]  # (height, width): ratios 1, 0.5 and 2
COLOURS = ["red", "green", "blue", "yellow"]
SPEC = SplitSpec("train", 16, aspect_ratios=(0.5, 1.0, 2.0), bucket_multiple=4)


def synthetic_shards(root: Path, samples: int, per_shard: int) -> str:
    """``samples`` tiny JPEG + caption samples in tars of ``per_shard``; the brace pattern naming them."""
    jpegs = {}
    for (height, width), colour in ((s, c) for s in SHAPES for c in COLOURS):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height), colour).save(buffer, "JPEG", quality=80)
        jpegs[(height, width), colour] = buffer.getvalue()
    shards = math.ceil(samples / per_shard)
    for shard in range(shards):
        keys = range(shard * per_shard, min(samples, (shard + 1) * per_shard))
        rows = []
        for key in keys:
            shape, colour = SHAPES[key % len(SHAPES)], COLOURS[key // len(SHAPES) % len(COLOURS)]
            rows.append({"jpg": jpegs[shape, colour], "txt": f"a {colour} square number {key}".encode()})
        write_shard(root / f"{shard:05d}.tar", rows, keys=[f"{k:09d}" for k in keys])
    return str(root / f"{{00000..{shards - 1:05d}}}.tar")


def random_features(records, size, report):
    """A stand-in encoder of the embedded default's shapes: 4-channel latents, 16 tokens of 32 dims."""
    generator = torch.Generator().manual_seed(len(records))
    n, (height, width) = len(records), size
    return {
        "latent_mean": torch.randn(n, 4, height // 4, width // 4, generator=generator),
        "latent_std": torch.rand(n, 4, height // 4, width // 4, generator=generator),
        "dense_emb": torch.randn(n, 16, 32, generator=generator).half(),
        "dense_mask": torch.ones(n, 16, dtype=torch.uint8),
        "label": torch.zeros(n, dtype=torch.int64),
        "aesthetic": torch.full((n,), 6.0),
    }, [r.key for r in records]


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def read_rate(loader) -> tuple[float, int]:
    """Samples/s of one pass over ``loader`` and the number of mixed-bucket batches (must be 0)."""
    seconds, batches = timed(lambda: [(len(b["index"]), len({tuple(hw.tolist()) for hw in b["hw"]})) for b in loader])
    assert all(buckets == 1 for _, buckets in batches), "a batch mixed aspect buckets"
    return sum(n for n, _ in batches) / seconds, len(batches)


def tiny_models(root: Path, captions: list[str]) -> tuple[dict, dict]:
    """A small VAE and T5 saved as the stages load them; their ``conf/vae`` / ``conf/text_encoder`` nodes."""
    from transformers import T5EncoderModel

    from pixart_lab.models.text_encoder import FrozenTextEncoder, T5PretrainConfig, t5_config
    from pixart_lab.models.tokenizer import build_tokenizer
    from pixart_lab.models.vae import build_vae

    torch.manual_seed(0)
    build_vae(block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=4, sample_size=16).save_pretrained(root / "vae")
    tokenizer = build_tokenizer(captions)
    config = t5_config(tokenizer, T5PretrainConfig(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64))
    FrozenTextEncoder(tokenizer, T5EncoderModel(config), max_length=32).save_pretrained(root / "text_encoder")
    return {"pretrained": str(root / "vae")}, {"pretrained": str(root / "text_encoder"), "max_length": 32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="synthetic samples in the tar shards")
    parser.add_argument("--per-shard", type=int, default=10_000, help="samples per tar shard")
    parser.add_argument("--feature-shard-size", type=int, default=1024, help="rows per feature shard")
    parser.add_argument("--extract-samples", type=int, default=2048, help="samples extracted by 1 and by 2 workers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder (default: the system's)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="pixart_lab-streaming-", dir=args.tmp))
    try:
        pattern = synthetic_shards(root / "tars", args.samples, args.per_shard)
        tar_mb = sum(p.stat().st_size for p in (root / "tars").glob("*.tar")) / 1e6
        listings = [timed(lambda: WebDatasetReader(pattern).records()) for _ in range(args.runs)]
        records = listings[0][1]
        assert len(records) == args.samples, f"read {len(records)} of {args.samples} samples"
        print(f"{args.samples} samples in {math.ceil(args.samples / args.per_shard)} tar shards ({tar_mb:.0f} MB)")
        print(f"  WebDatasetReader listing (caption, image header): "
              f"{args.samples / statistics.median(s for s, _ in listings):9.0f} samples/s")  # fmt: skip

        features = root / "features"
        seconds, _ = timed(lambda: cache_split(records, SPEC, features / "train", random_features, SkipReport(),
                                               shard_size=args.feature_shard_size, progress=False))  # fmt: skip
        write_json(features / "manifest.json", {"vae": {"scaling_factor": 1.0}})
        cache_mb = sum(p.stat().st_size for p in (features / "train").glob("*.safetensors")) / 1e6
        print(f"  feature cache packed: {args.samples / seconds:9.0f} samples/s ({cache_mb:.0f} MB in "
              f"{len(list((features / 'train').glob('*.safetensors')))} shards)")  # fmt: skip

        modules = {
            "in-memory FeatureDataModule (load + 1 epoch)": lambda: FeatureDataModule(features, val_split=None, batch_size=args.batch_size),
            "streaming, 0 loader workers": lambda: StreamingFeatureDataModule(features, val_split=None, batch_size=args.batch_size),
            "streaming, 2 loader workers": lambda: StreamingFeatureDataModule(features, val_split=None, batch_size=args.batch_size, num_workers=2),
        }  # fmt: skip
        for label, make in modules.items():
            rates = []
            for _ in range(args.runs):
                start = time.perf_counter()
                module = make()
                module.setup()
                _, batches = read_rate(module.train_dataloader())
                rates.append(batches * args.batch_size / (time.perf_counter() - start))
            print(f"  {label:46s} {statistics.median(rates):9.0f} samples/s (batch {args.batch_size}, one bucket each)")

        vae, text_encoder = tiny_models(root / "models", [r.dense_caption for r in records[: args.extract_samples]])
        subset = records[: args.extract_samples]
        feats = {"out_dir": "", "shard_size": 64, "batch_size": 64, "emb_dtype": "float16", "num_threads": 2, "device": "cpu"}
        print(f"extraction of {len(subset)} samples (small VAE and T5, 2 threads in all):")
        for workers in (1, 2):
            overall, per_worker = [], []
            for run in range(args.runs):
                out = root / f"extract-{workers}-{run}"
                job = ExtractionJob(vae, text_encoder, {**feats, "out_dir": str(out), "workers": workers}, ImageLimits(),
                                    {"train": (SPEC, subset)})  # fmt: skip
                seconds, parts = timed(lambda: run_local_workers(job, workers))
                stats, _ = merge_parts(job, parts, workers)
                assert stats["train"]["count"] == len(subset)
                overall.append(len(subset) / seconds)
                per_worker.append(statistics.mean(p["splits"]["train"]["images_per_second"] for p in parts))
                shutil.rmtree(out)
            print(f"  {workers} worker(s): {statistics.median(per_worker):7.1f} images/s per worker (encoding), "
                  f"{statistics.median(overall):7.1f} images/s overall (process start and model loading included)")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
