"""What verifying the feature cache's SHA-256s costs when a training stage loads it.

    python benchmarks/feature_cache_checksums.py features [--splits train heldout aesthetic]

Loads every shard of the splits twice, as ``FeatureDataset`` does: without and with the checksum
check, and prints seconds and MB/s of each (the page cache is warmed by a first read).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pixart_lab.data.features import read_shard
from pixart_lab.utils.io import file_sha256


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("features_dir", type=Path)
    parser.add_argument("--splits", nargs="+", default=["train", "heldout", "aesthetic"])
    args = parser.parse_args()
    shards = []
    for split in args.splits:
        for shard in json.loads((args.features_dir / split / "index.json").read_text())["shards"]:
            path = args.features_dir / split / shard["file"]
            shards.append((path, shard.get("sha256") or file_sha256(path)))  # older caches: computed here
    size_mb = sum(path.stat().st_size for path, _ in shards) / 1e6
    timings = {}
    for label, check in (("without checksums", False), ("with checksums", True), ("without checksums (again)", False)):
        start = time.perf_counter()
        for path, sha in shards:
            read_shard(path, sha if check else None)
        timings[label] = time.perf_counter() - start
    print(f"{len(shards)} shards, {size_mb:.0f} MB")
    for label, seconds in timings.items():
        print(f"  {label:26s} {seconds:6.2f} s  {size_mb / seconds:7.0f} MB/s")


if __name__ == "__main__":
    main()
