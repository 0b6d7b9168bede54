"""Feature extraction spread over workers: N local processes (``features.workers=N``), or the ranks
of an external launcher (``torchrun --nproc-per-node N -m pixart_lab.cli.extract_features``).

Every worker holds the same records and plan and writes its own shards and manifest
(:func:`~pixart_lab.data.features.cache_split` with ``rank`` / ``world_size``); the index is merged
from the manifests once all are there (:func:`~pixart_lab.data.features.merge_split`). Local
processes are merged by the launching process; under torchrun, whichever rank finishes last does
it (the merge is idempotent and atomic, so two ranks finishing together write the same bytes). A
killed worker leaves only whole shards: running the command again resumes every worker.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch

from pixart_lab.data.features import SplitSpec, extract_split, merge_split
from pixart_lab.data.images import ImageLimits
from pixart_lab.data.records import Record, SkipReport
from pixart_lab.utils.device import pick_device
from pixart_lab.utils.errors import PixArtLabError


@dataclass(frozen=True)
class ExtractionJob:
    """What every worker needs, picklable: model configs (``conf/vae``, ``conf/text_encoder`` nodes),
    the ``features`` settings, image limits, and each split's spec and records."""

    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    features: dict[str, Any]
    limits: ImageLimits
    splits: dict[str, tuple[SplitSpec, list[Record]]]

    @property
    def out_dir(self) -> Path:
        return Path(self.features["out_dir"])


def launched_rank() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) set by torchrun (or any launcher using its variables); else (0, 1, 0)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    return rank, world_size, int(os.environ.get("LOCAL_RANK", rank))


def worker_device(device: str | None, local_rank: int) -> torch.device:
    """``device`` as configured; ``auto`` spreads workers over the CUDA devices there are (one each, round robin)."""
    chosen = pick_device(device)
    if device in (None, "auto") and chosen.type == "cuda":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return chosen


def extract_part(job: ExtractionJob, rank: int, world_size: int, local_rank: int | None = None) -> dict:
    """Worker ``rank`` of ``world_size``: load the models, extract its shards of every split.

    Returns its split statistics, its report, the models' facts for the cache manifest and its time."""
    from pixart_lab.models.text_encoder import FrozenTextEncoder
    from pixart_lab.models.vae import load_vae

    start = time.perf_counter()
    feats = job.features
    torch.set_num_threads(max(1, int(feats["num_threads"]) // max(1, int(feats.get("workers", 1)))))
    device = worker_device(feats.get("device"), rank if local_rank is None else local_rank)
    vae = load_vae(job.vae["pretrained"], job.vae.get("subfolder"), job.vae.get("scaling_factor")).eval()
    vae = vae.to(device, memory_format=torch.channels_last)  # measured 1.2x faster convolutions on CPU
    text_encoder = FrozenTextEncoder.from_config(job.text_encoder)
    if not getattr(text_encoder.encoder, "is_loaded_in_8bit", False):  # bitsandbytes placed it already
        text_encoder.to(device)
    report = SkipReport(source="extract_features")
    splits = {
        name: extract_split(
            records, spec, job.out_dir / name, vae, text_encoder, report, shard_size=feats["shard_size"],
            batch_size=feats["batch_size"], emb_dtype=getattr(torch, feats["emb_dtype"]), limits=job.limits,
            rank=rank, world_size=world_size, progress=rank == 0,
        )
        for name, (spec, records) in job.splits.items()
    }  # fmt: skip
    models = {
        "vae": {"source": str(job.vae["pretrained"]), "scaling_factor": float(vae.config.scaling_factor),
                "latent_channels": int(vae.config.latent_channels)},
        "text_encoder": {"source": str(job.text_encoder["pretrained"]), "max_length": job.text_encoder["max_length"],
                         "hidden_size": text_encoder.hidden_size},
    }  # fmt: skip
    return {"rank": rank, "splits": splits, "report": report.as_dict(), "models": models, "seconds": time.perf_counter() - start}


def run_local_workers(job: ExtractionJob, workers: int) -> list[dict]:
    """Run ``workers`` worker processes (spawned: fresh interpreters, no forked model state) to the end."""
    try:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            return list(pool.map(partial(extract_part, job, world_size=workers), range(workers)))
    except BrokenProcessPool as e:
        raise PixArtLabError(
            f"an extraction worker process died ({e}); the shards written so far are whole: run the command again to resume"
        ) from e


def merge_parts(job: ExtractionJob, parts: list[dict], world_size: int) -> tuple[dict[str, dict], SkipReport]:
    """Every split's statistics over ``parts`` (index written by merging when ``world_size > 1``) and the
    skips and conversions of every shard; ``ValueError`` if a worker has not finished."""
    if world_size == 1:
        (part,) = parts
        return part["splits"], SkipReport.from_dict(part["report"])
    report = SkipReport(source="extract_features")
    splits = {}
    for name in job.splits:
        index = merge_split(job.out_dir / name, world_size, report)
        computed = sum(p["splits"][name]["computed_images"] for p in parts)
        splits[name] = {"count": index["count"], "computed_images": computed, "images_per_second": None}
    return splits, report


def worker_throughput(parts: list[dict]) -> list[dict]:
    """Images each worker computed and its images/s (over its whole run, model loading included)."""
    rows = []
    for part in sorted(parts, key=lambda p: p["rank"]):
        computed = sum(s["computed_images"] for s in part["splits"].values())
        rows.append({"rank": part["rank"], "computed_images": computed, "seconds": round(part["seconds"], 2),
                     "images_per_second": round(computed / part["seconds"], 1) if computed else None})  # fmt: skip
    return rows
