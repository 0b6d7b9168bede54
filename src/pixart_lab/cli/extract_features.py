"""Stage `extract_features`: cache VAE latents and T5 caption embeddings for every split.

``features.workers=N`` spreads the shards over N local processes; under torchrun each rank takes
its part (data/extraction_workers.py). Either way the cache equals a one-worker cache.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.extraction_workers import (
    ExtractionJob, extract_part, launched_rank, merge_parts, run_local_workers, worker_throughput,
)  # fmt: skip
from pixart_lab.data.features import SplitSpec, cache_summary
from pixart_lab.data.images import ImageLimits
from pixart_lab.utils.errors import ConfigError
from pixart_lab.utils.io import write_json


@entry_point("extract_features")
def main(cfg: DictConfig) -> dict | None:
    torch.set_num_threads(cfg.features.num_threads)
    start = time.perf_counter()
    feats = cfg.features
    rank, world_size, local_rank = launched_rank()
    if feats.workers > 1 and world_size > 1:
        raise ConfigError(f"features.workers={feats.workers} starts local workers; under a launcher of "
                          f"{world_size} ranks leave it at 1")  # fmt: skip
    limits = ImageLimits(cfg.images.max_pixels, cfg.images.min_side, tuple(cfg.images.background))
    # Readers first: a missing data folder is reported before any model is loaded.
    readers = {name: instantiate(cfg.data.splits[name], limits=limits) for name in feats.splits if name in cfg.data.splits}
    splits = {
        name: (SplitSpec(name=name, **OmegaConf.to_container(feats.splits[name], resolve=True)), reader.records())
        for name, reader in readers.items()
    }
    # Only the splits read here are resolved (above): another split's size may name a source that this
    # data choice lacks (data=folder has no generator).
    settings = {key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
                for key, value in feats.items() if key != "splits"}  # fmt: skip
    plain = [OmegaConf.to_container(node, resolve=True) for node in (cfg.vae, cfg.text_encoder)]
    job = ExtractionJob(*plain, settings, limits=limits, splits=splits)
    if feats.workers > 1:
        parts, world_size = run_local_workers(job, feats.workers), feats.workers
    else:
        parts = [extract_part(job, rank, world_size, local_rank)]
    try:
        stats, report = merge_parts(job, parts, world_size)
    except ValueError as e:  # a launcher's rank that finished before the others: the last one merges
        print(f"features: rank {rank} of {world_size} done; {e}")
        return None
    for reader in readers.values():
        report.merge(reader.report)
    report.kept = sum(s["count"] for s in stats.values())  # readers count what they pass on; some fail to decode
    manifest = {**parts[0]["models"], "splits": {name: {"count": s["count"]} for name, s in stats.items()}}
    write_json(Path(feats.out_dir) / "manifest.json", manifest)
    report.write(Path(feats.out_dir) / "report.json")
    metrics = cache_summary(stats, report, time.perf_counter() - start)
    if world_size > 1:
        metrics["workers"] = worker_throughput(parts)
    write_json(cfg.outputs.metrics, metrics)
    print(f"features: {metrics['images']} images cached, {metrics['skipped']} skipped, {metrics['converted']} "
          f"conversions (see {Path(feats.out_dir) / 'report.json'}), {metrics['images_per_second']} images/s")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
