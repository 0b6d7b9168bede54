"""Extraction split over workers: each writes its shards and manifest, the merged cache equals a
one-worker cache byte for byte, and a killed worker resumes."""

import json
import os
import subprocess
import sys

import pytest
from test_features import SPECS, records, shard_bytes

from pixart_lab.data.features import extract_split, merge_split, worker_manifest
from pixart_lab.data.records import SkipReport

SPLITS = ("train", "aesthetic")  # one bucket, and five aspect buckets


def extract(corpus, out, vae, text_encoder, split, rank=0, world_size=1, **kwargs):
    report = SkipReport()
    stats = extract_split(records(corpus, split), SPECS[split], out / split, vae, text_encoder, report, shard_size=4,
                          batch_size=4, progress=False, rank=rank, world_size=world_size, **kwargs)  # fmt: skip
    return stats, report


def test_two_workers_merge_into_the_cache_one_worker_writes(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    for split in SPLITS:
        _, one_report = extract(tiny_corpus, tmp_path / "one", tiny_vae, tiny_text_encoder, split)
        parts = [extract(tiny_corpus, tmp_path / "two", tiny_vae, tiny_text_encoder, split, rank, 2)[0] for rank in (0, 1)]
        plan = json.loads(worker_manifest(tmp_path / "two" / split, 0, 2).read_text())["plan"]
        # the shards alternate between the workers and no shard is computed twice
        assert [p["computed_images"] for p in parts] == [p["count"] for p in parts]
        assert sum(p["count"] for p in parts) == json.loads((tmp_path / "one" / split / "index.json").read_text())["count"]
        mine = json.loads(worker_manifest(tmp_path / "two" / split, 1, 2).read_text())["shards"]
        assert [s["file"] for s in mine] == plan[1::2]
        assert not (tmp_path / "two" / split / "index.json").exists()  # written by the merge only

        merged_report = SkipReport()
        merge_split(tmp_path / "two" / split, 2, merged_report)
        assert shard_bytes(tmp_path / "two" / split) == shard_bytes(tmp_path / "one" / split)
        assert (tmp_path / "two" / split / "index.json").read_bytes() == (tmp_path / "one" / split / "index.json").read_bytes()
        assert merged_report.as_dict() == one_report.as_dict()
    assert len(shard_bytes(tmp_path / "one" / "aesthetic")) == 5  # the multi-aspect split has several buckets


def test_the_merge_names_the_workers_that_have_not_finished(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    extract(tiny_corpus, tmp_path, tiny_vae, tiny_text_encoder, "train", rank=0, world_size=3)
    with pytest.raises(ValueError, match=r"2 of 3 workers have not finished .*rank-001-of-003.json, .*rank-002-of-003.json"):
        merge_split(tmp_path / "train", 3)
    assert not (tmp_path / "train" / "index.json").exists()
    with pytest.raises(ValueError, match=r"worker rank 3 outside 0..2"):
        extract(tiny_corpus, tmp_path, tiny_vae, tiny_text_encoder, "train", rank=3, world_size=3)


def test_a_killed_worker_resumes_without_touching_the_others(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    extract(tiny_corpus, tmp_path / "one", tiny_vae, tiny_text_encoder, "train")

    class Killed(RuntimeError):
        pass

    def die_after_first(path):
        raise Killed(path)

    out = tmp_path / "two" / "train"
    extract(tiny_corpus, tmp_path / "two", tiny_vae, tiny_text_encoder, "train", rank=0, world_size=2)
    with pytest.raises(Killed):
        extract(tiny_corpus, tmp_path / "two", tiny_vae, tiny_text_encoder, "train", 1, 2, on_shard_written=die_after_first)
    assert not worker_manifest(out, 1, 2).exists()
    with pytest.raises(ValueError, match="1 of 2 workers have not finished"):
        merge_split(out, 2)
    # a temporary of a shard worker 0 might be writing now, and a torn one of worker 1's own
    (out / ".1p0-00002.safetensors.x.tmp").write_bytes(b"worker 0 writing")
    (out / ".1p0-00003.safetensors.x.tmp").write_bytes(b"torn")
    stats, _ = extract(tiny_corpus, tmp_path / "two", tiny_vae, tiny_text_encoder, "train", rank=1, world_size=2)
    assert stats == {"count": 12, "computed_images": 8, "images_per_second": stats["images_per_second"]}  # 1 of 3 re-used
    assert (out / ".1p0-00002.safetensors.x.tmp").exists() and not (out / ".1p0-00003.safetensors.x.tmp").exists()
    (out / ".1p0-00002.safetensors.x.tmp").unlink()
    merge_split(out, 2)
    assert shard_bytes(out) == shard_bytes(tmp_path / "one" / "train")
    assert (out / "index.json").read_bytes() == (tmp_path / "one" / "train" / "index.json").read_bytes()


def run_extract(tmp_path, corpus, models, out, *overrides):
    cmd = [
        sys.executable, "-m", "pixart_lab.cli.extract_features", f"paths.data_dir={corpus}", f"features.out_dir={out}",
        f"vae.pretrained={models}/vae", f"text_encoder.pretrained={models}/text_encoder", "features.shard_size=4",
        "features.batch_size=4", f"outputs.metrics={out}.json", f"hydra.run.dir={tmp_path}/hydra", *overrides,
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / f"{out.name}.json").read_text())


@pytest.mark.slow  # three interpreters each import torch, diffusers and transformers: minutes on a busy machine
def test_two_worker_processes_write_the_one_worker_cache(tiny_corpus, saved_tiny_models, tmp_path):
    # One thread per worker in both runs: the same kernels give the same bits.
    one = run_extract(tmp_path, tiny_corpus, saved_tiny_models, tmp_path / "one", "features.num_threads=1")
    two = run_extract(tmp_path, tiny_corpus, saved_tiny_models, tmp_path / "two", "features.num_threads=2", "features.workers=2")
    assert [w["rank"] for w in two["workers"]] == [0, 1]
    assert sum(w["computed_images"] for w in two["workers"]) == two["computed_images"] == one["images"] == 46
    for name in ("manifest.json", "report.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    for split in ("train", "heldout", "aesthetic"):
        assert shard_bytes(tmp_path / "two" / split) == shard_bytes(tmp_path / "one" / split)
        assert (tmp_path / "two" / split / "index.json").read_bytes() == (tmp_path / "one" / split / "index.json").read_bytes()
