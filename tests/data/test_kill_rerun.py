"""Corpus generation and feature extraction killed (SIGKILL) at a random point, then run again: the
result equals an uninterrupted run byte for byte, no truncated file is ever read, no sample is
cached twice. The kill point comes from a printed seed (``KILL_SEED=<n>`` replays it)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import torch
from interruptions import kill_seed, kill_when
from test_corpus import tree_bytes

from pixart_lab.data.corpus import CorpusConfig, generate_corpus
from pixart_lab.data.features import SplitSpec, extract_split, read_shard
from pixart_lab.data.readers import PixArtInfoReader
from pixart_lab.data.records import SkipReport
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae

CORPUS = dict(n_train=160, n_heldout=16, n_aesthetic=16, chunksize=8)
SPECS = [SplitSpec("train", 48), SplitSpec("heldout", 48), SplitSpec("aesthetic", 96, (0.5, 0.75, 1.0, 1.33, 2.0))]


def start(module: str, *overrides: str, cwd: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", module, *overrides, f"hydra.run.dir={cwd}/hydra"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def count(root: Path, pattern: str) -> int:
    return sum(1 for _ in root.rglob(pattern)) if root.is_dir() else 0


def test_corpus_generation_killed_at_a_random_point_completes_identically(tmp_path):
    seed = kill_seed()
    target = random.Random(seed).randint(1, 150)
    context = f"KILL_SEED={seed}: corpus killed after {target} images"
    print(context)
    root = tmp_path / "data"
    overrides = [f"data.generator.{k}={v}" for k, v in CORPUS.items() if k != "chunksize"]
    process = start("pixart_lab.cli.corpus", f"paths.data_dir={root}", "dvc_file=null", "data.generator.workers=2",
                    f"+data.generator.chunksize={CORPUS['chunksize']}", *overrides, cwd=tmp_path)  # fmt: skip
    kill_when(process, lambda: count(root, "*.png") >= target)

    reference = tmp_path / "reference"
    generate_corpus(reference, CorpusConfig(workers=1, **CORPUS), progress=False)
    expected = tree_bytes(reference)
    written = tree_bytes(root)
    assert not (root / "manifest.json").exists(), context  # written last: its presence means complete
    assert written and all(expected[name] == data for name, data in written.items()), f"{context}: a torn or wrong file"

    summary = generate_corpus(root, CorpusConfig(workers=2, **CORPUS), progress=False)  # the re-run
    assert summary["reused"] >= target and summary["rendered"] == 192 - summary["reused"], context
    assert tree_bytes(root) == expected, context
    assert not list(root.rglob("*.tmp")), context


def test_feature_extraction_killed_at_a_random_point_completes_identically(tiny_corpus, saved_tiny_models, tmp_path):
    seed = kill_seed()
    target = random.Random(seed).randint(1, 10)
    context = f"KILL_SEED={seed}: extraction killed after {target} shards"
    print(context)
    out = tmp_path / "features"
    process = start(
        "pixart_lab.cli.extract_features", f"paths.data_dir={tiny_corpus}", f"features.out_dir={out}",
        f"vae.pretrained={saved_tiny_models}/vae", f"text_encoder.pretrained={saved_tiny_models}/text_encoder",
        "features.shard_size=4", "features.batch_size=4", "features.num_threads=1", f"outputs.metrics={tmp_path}/m.json",
        cwd=tmp_path,
    )  # fmt: skip
    kill_when(process, lambda: count(out, "*.safetensors") >= target)
    for shard in out.rglob("*.safetensors"):
        read_shard(shard)  # every shard on disk is whole (a torn one would raise)

    vae = load_vae(str(saved_tiny_models / "vae")).eval()
    encoder = FrozenTextEncoder.from_pretrained(saved_tiny_models / "text_encoder", max_length=120)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the killed process: the same kernels, the same bits
    try:
        for root in (out, tmp_path / "reference"):  # the re-run of the killed extraction, and an uninterrupted one
            for spec in SPECS:
                records = PixArtInfoReader(tiny_corpus / spec.name / "data_info.json", key_prefix=f"{spec.name}/").records()
                extract_split(records, spec, root / spec.name, vae, encoder, SkipReport(), shard_size=4, batch_size=4, progress=False)
    finally:
        torch.set_num_threads(threads)

    for spec in SPECS:
        index = json.loads((out / spec.name / "index.json").read_text())
        assert index == json.loads((tmp_path / "reference" / spec.name / "index.json").read_text()), context
        keys = [k for shard in index["shards"] for k in read_shard(out / spec.name / shard["file"], shard["sha256"])[1]]
        assert len(keys) == len(set(keys)) == index["count"], f"{context}: a sample is missing or cached twice"
    assert not list(out.rglob("*.tmp")), context
