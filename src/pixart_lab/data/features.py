"""The feature cache: VAE posterior moments and T5 caption embeddings, in packed, atomic shards.

PixArt trains from pre-extracted features (its ``tools/extract_features.py``): the VAE and T5 never
run in the training loop. Each shard holds one aspect bucket, so every batch drawn from a shard
has one latent shape. Layout::

    features/manifest.json                      VAE scaling factor, text encoder, splits
    features/<split>/index.json                 shards: file, bucket, size, count, sha256
    features/<split>/<bucket>-00000.safetensors latent_mean, latent_std, {dense,sparse}_{emb,mask},
                                                label, aesthetic; record keys in the metadata
    features/report.json                        skipped inputs by reason

Shards are written to a temporary name and renamed, so a killed run leaves only whole shards, and a
re-run skips those and computes the rest (resume). A shard is re-used only if it holds exactly the
records its place in the plan should hold, and the index records each shard's SHA-256, which every
reader checks: a damaged or foreign shard is never read, and no sample is cached twice.

Extraction splits across ``world_size`` workers (processes, or ranks of torchrun): the plan is the
same for all, worker ``rank`` writes every ``world_size``-th shard of it and a manifest
``workers/rank-<r>-of-<n>.json``; :func:`merge_split` turns the manifests into the one index, equal
to the index a single worker writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from tqdm import tqdm

from pixart_lab.data.buckets import bucket_table, closest_bucket
from pixart_lab.data.images import ImageLimits
from pixart_lab.data.records import Record, SkipReport
from pixart_lab.data.transforms import load_images, uint8_to_model_range
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.utils.io import atomic_path, file_sha256, write_json

log = logging.getLogger(__name__)

CAPTION_KINDS = ("dense", "sparse")


@dataclass(frozen=True)
class SplitSpec:
    """How one split is bucketed: a single square size, or PixArt-style aspect buckets of ~size² area."""

    name: str
    size: int
    aspect_ratios: Sequence[float] | str | None = None  # "pixart": PixArt's own table at `size` (256/512/1024)
    bucket_multiple: int = 8

    def buckets(self) -> dict[str, tuple[int, int]]:
        if not self.aspect_ratios:
            return {"1.0": (self.size, self.size)}
        return bucket_table(self.size, self.aspect_ratios, self.bucket_multiple)


def assign_buckets(records: Sequence[Record], spec: SplitSpec) -> dict[str, list[Record]]:
    """Group records by the closest aspect bucket (PixArt's get_closest_ratio), order preserved."""
    table = spec.buckets()
    groups: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        key = "1.0" if len(table) == 1 else closest_bucket(record.height or 1, record.width or 1, table)
        groups[key].append(record)
    return dict(sorted(groups.items()))


def shard_name(bucket: str, index: int) -> str:
    return f"{bucket.replace('.', 'p')}-{index:05d}.safetensors"


def shard_info(path: str | Path) -> dict:
    """A shard's metadata: record ``keys``, ``bucket``, size and the ``report`` of its extraction."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads(f.metadata()["pixart_lab"])
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable feature shard ({e})") from e


def read_shard(path: str | Path, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Load one shard's tensors and record keys; raise ``ValueError`` naming the file if it is unusable
    (unreadable, or not the bytes whose ``sha256`` the index recorded)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"{path}: unreadable feature shard ({e})") from e
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path}: checksum mismatch (the index records sha256 {sha256[:12]}...); re-run extract_features")
    keys = shard_info(path)["keys"]
    try:
        tensors = load(data)
    except SafetensorError as e:
        raise ValueError(f"{path}: unreadable feature shard ({e})") from e
    return tensors, keys


def _shard_is_complete(path: Path, chunk: Sequence[Record]) -> bool:
    """True if ``path`` is a readable shard of exactly ``chunk``'s records (those not skipped), in order."""
    if not path.is_file():
        return False
    try:
        _, keys = read_shard(path)
    except ValueError:
        return False
    kept = set(keys)
    return keys == [r.key for r in chunk if r.key in kept] and len(kept) == len(keys)


def unique_records(records: Sequence[Record], report: SkipReport) -> list[Record]:
    """``records`` without repeated keys (a data_info.json listing an image twice): the first is kept."""
    seen: set[str] = set()
    unique = []
    for record in records:
        if record.key in seen:
            report.skip(record.key, "listed more than once")
        else:
            seen.add(record.key)
            unique.append(record)
    return unique


def _remove_stale_files(out_dir: Path, planned: set[str], own: set[str] | None = None) -> None:
    """Remove temporary files of a killed run (all, or those of this worker's ``own`` shards: the other
    workers may be writing theirs) and shards outside the plan (e.g. of another shard size)."""
    patterns = [".*.tmp"] if own is None else [f".{name}.*.tmp" for name in own]  # atomic_path's temporaries
    for path in (path for pattern in patterns for path in out_dir.glob(pattern)):
        path.unlink(missing_ok=True)
    for path in out_dir.glob("*.safetensors"):
        if path.name not in planned:
            log.info("removing %s: not a shard of the current plan", path)
            path.unlink(missing_ok=True)


def shard_plan(records: Sequence[Record], spec: SplitSpec, shard_size: int) -> list[tuple[str, tuple[int, int], int, list[Record]]]:
    """The deterministic plan of one split: (bucket, size, shard index, records) per shard, buckets in order."""
    return [
        (bucket, spec.buckets()[bucket], i // shard_size, group[i : i + shard_size])
        for bucket, group in assign_buckets(records, spec).items()
        for i in range(0, len(group), shard_size)
    ]


def worker_manifest(out_dir: str | Path, rank: int, world_size: int) -> Path:
    return Path(out_dir) / "workers" / f"rank-{rank:03d}-of-{world_size:03d}.json"


def write_index(out_dir: Path, split: str, shards: list[dict]) -> dict:
    """Write ``out_dir/index.json`` listing ``shards`` (in plan order) and return it."""
    index = {"split": split, "shards": shards, "count": sum(s["count"] for s in shards)}
    write_json(out_dir / "index.json", index)
    return index


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad dimension 1 of ``x`` (tokens) up to ``length``."""
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, length - x.shape[1]))


@torch.inference_mode()
def encode_shard(
    records: Sequence[Record],
    size: tuple[int, int],
    report: SkipReport,
    vae: AutoencoderKL,
    text_encoder: FrozenTextEncoder,
    batch_size: int,
    emb_dtype: torch.dtype,
    limits: ImageLimits = ImageLimits(),
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """VAE posterior moments of the images and T5 embeddings of their captions, for one shard (a
    :data:`ShardEncoder` once the models are bound).

    Captions longer than the text encoder's ``max_length`` are truncated (as PixArt does) and counted
    in ``report``."""
    images, kept = load_images(records, *size, report=report, progress=False, limits=limits)
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        batch = uint8_to_model_range(images[i : i + batch_size]).to(vae.device, vae.dtype)
        posterior = vae.encode(batch.contiguous(memory_format=torch.channels_last)).latent_dist
        means.append(posterior.mean.cpu())
        stds.append(posterior.std.cpu())
    tensors = {"latent_mean": torch.cat(means).float().contiguous(), "latent_std": torch.cat(stds).float().contiguous()}
    captions = {"dense": [r.dense_caption for r in kept]}
    if all(r.sparse_caption for r in kept):
        captions["sparse"] = [r.sparse_caption for r in kept]
    for kind, texts in captions.items():
        for record, cut in zip(kept, text_encoder.truncated(texts)):
            if cut:
                report.convert(record.key, f"{kind} caption truncated to {text_encoder.max_length} tokens")
        batches = [
            tuple(x.cpu() for x in text_encoder.encode(texts[i : i + batch_size], pad_to_max_length=False))
            for i in range(0, len(texts), batch_size)
        ]
        # Each batch is padded to its own longest caption; pad them all to the shard's longest.
        length = max(mask.shape[1] for _, mask in batches)
        emb = torch.cat([pad_tokens(e, length) for e, _ in batches])
        mask = torch.cat([pad_tokens(m, length) for _, m in batches])
        # Stored at the shard's longest caption, not max_length: the rest is masked padding.
        tensors[f"{kind}_emb"] = emb.to(emb_dtype).contiguous()
        tensors[f"{kind}_mask"] = mask.to(torch.uint8).contiguous()
    tensors["label"] = torch.tensor([-1 if r.label is None else int(r.label) for r in kept], dtype=torch.int64)
    tensors["aesthetic"] = torch.tensor([math.nan if r.aesthetic is None else float(r.aesthetic) for r in kept])
    return tensors, [r.key for r in kept]


# Encodes one shard's records at one (height, width): tensors (first dimension = records kept) and their keys.
ShardEncoder = Callable[[Sequence[Record], tuple[int, int], SkipReport], tuple[dict[str, torch.Tensor], list[str]]]


def extract_split(
    records: Sequence[Record],
    spec: SplitSpec,
    out_dir: str | Path,
    vae: AutoencoderKL,
    text_encoder: FrozenTextEncoder,
    report: SkipReport,
    shard_size: int = 1024,
    batch_size: int = 64,
    emb_dtype: torch.dtype = torch.float16,
    progress: bool = True,
    on_shard_written: Callable[[Path], None] | None = None,
    limits: ImageLimits = ImageLimits(),
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Extract every missing shard of one split (of worker ``rank``'s part) and write its index (its
    manifest); return counts and throughput."""
    encode = partial(
        encode_shard, vae=vae, text_encoder=text_encoder, batch_size=batch_size, emb_dtype=emb_dtype, limits=limits
    )
    return cache_split(
        records, spec, out_dir, encode, report, shard_size, progress, on_shard_written, desc="features", rank=rank,
        world_size=world_size,
    )  # fmt: skip


def cache_split(
    records: Sequence[Record],
    spec: SplitSpec,
    out_dir: str | Path,
    encode: ShardEncoder,
    report: SkipReport,
    shard_size: int = 1024,
    progress: bool = True,
    on_shard_written: Callable[[Path], None] | None = None,
    desc: str = "cache",
    rank: int = 0,
    world_size: int = 1,
) -> dict:
    """Write every missing shard ``encode`` makes of one split (atomically) and its index; counts and
    throughput. Skips and conversions go to ``report``, those of re-used shards included.

    With ``world_size > 1`` only the shards of worker ``rank`` are made, and its manifest is written
    instead of the index (:func:`merge_split` writes that)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"worker rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = unique_records(records, report)
    plan = shard_plan(records, spec, shard_size)
    mine = plan[rank::world_size]
    planned = [shard_name(bucket, index) for bucket, _, index, _ in plan]
    _remove_stale_files(out_dir, set(planned), set(planned[rank::world_size]) if world_size > 1 else None)
    shards, computed_images, seconds = [], 0, 0.0
    bar = tqdm(total=sum(len(chunk) for *_, chunk in mine), desc=f"{desc} {spec.name}", unit="img", disable=not progress)
    for bucket, size, index, chunk in mine:
        path = out_dir / shard_name(bucket, index)
        if not _shard_is_complete(path, chunk):
            start = time.perf_counter()
            shard_report = SkipReport(source=path.name)
            tensors, keys = encode(chunk, size, shard_report)
            # One metadata entry: safetensors orders several entries arbitrarily, and equal shards
            # must be equal bytes (resume, DVC hashes). The shard's own report travels with it, so a
            # resumed extraction reports the skips and conversions of the shards it re-uses.
            info = {"keys": keys, "bucket": bucket, "height": size[0], "width": size[1], "report": shard_report.as_dict()}
            metadata = {"pixart_lab": json.dumps(info, sort_keys=True)}
            with atomic_path(path) as tmp:
                save_file(tensors, str(tmp), metadata=metadata)
            seconds += time.perf_counter() - start
            computed_images += len(chunk)
            if on_shard_written is not None:
                on_shard_written(path)
        info = shard_info(path)
        report.merge(SkipReport.from_dict(info.get("report", {})))
        shards.append({"file": path.name, "bucket": bucket, "height": size[0], "width": size[1],
                       "count": len(info["keys"]), "sha256": file_sha256(path)})  # fmt: skip
        bar.update(len(chunk))
    bar.close()
    if world_size == 1:
        count = write_index(out_dir, spec.name, shards)["count"]
    else:
        count = sum(s["count"] for s in shards)
        manifest = {"split": spec.name, "rank": rank, "world_size": world_size, "plan": planned, "shards": shards}
        write_json(worker_manifest(out_dir, rank, world_size), manifest)
    return {
        "count": count,
        "computed_images": computed_images,
        "images_per_second": round(computed_images / seconds, 1) if seconds else None,
    }


def merge_split(out_dir: str | Path, world_size: int, report: SkipReport | None = None) -> dict:
    """Merge the manifests of ``world_size`` workers into ``out_dir/index.json`` (shards in plan order,
    as one worker lists them); skips and conversions of every shard go to ``report``.

    Raise ``ValueError`` naming the workers whose manifest is missing or from another plan: the
    index is written only when every shard of the plan is there."""
    out_dir = Path(out_dir)
    paths = [worker_manifest(out_dir, rank, world_size) for rank in range(world_size)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ValueError(f"{out_dir}: {len(missing)} of {world_size} workers have not finished ({', '.join(missing)}); re-run them")
    manifests = [json.loads(p.read_text()) for p in paths]
    plan = manifests[0]["plan"]
    if foreign := [str(p) for p, m in zip(paths, manifests) if m["plan"] != plan]:
        raise ValueError(f"{out_dir}: workers planned different shards ({', '.join(foreign)} differ from {paths[0]}); re-run them")
    by_file = {shard["file"]: shard for manifest in manifests for shard in manifest["shards"]}
    if absent := [name for name in plan if name not in by_file]:
        raise ValueError(f"{out_dir}: no worker wrote {absent[:3]} ({len(absent)} shards); re-run the workers")
    shards = [by_file[name] for name in plan]
    if report is not None:
        for shard in shards:
            report.merge(SkipReport.from_dict(shard_info(out_dir / shard["file"]).get("report", {})))
    for other in set((out_dir / "workers").glob("rank-*.json")) - set(paths):  # of an earlier worker count
        other.unlink(missing_ok=True)
    return write_index(out_dir, manifests[0]["split"], shards)


def cache_summary(splits: dict[str, dict], report: SkipReport, seconds: float) -> dict:
    """A cache stage's metrics: images cached and skipped, images computed this run and their throughput."""
    computed = sum(s["computed_images"] for s in splits.values())
    return {
        "images": sum(s["count"] for s in splits.values()),
        "skipped": report.total_skipped,
        "converted": sum(report.converted.values()),
        "computed_images": computed,
        "images_per_second": round(computed / seconds, 1) if computed else None,
        "seconds": round(seconds, 1),
        "splits": splits,
    }
