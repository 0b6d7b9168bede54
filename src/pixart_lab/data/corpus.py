"""The embedded corpus: a deterministic, procedurally rendered stand-in for PixArt's training data.

Three splits, laid out as a user's own data would be (PixArt's ``data_info.json``, extended)::

    out_dir/manifest.json                      config, counts, vocabulary (no times, no paths)
    out_dir/{train,heldout,aesthetic}/data_info.json
    out_dir/{train,heldout,aesthetic}/images/000123.png

``train`` feeds stages 1-2 (class labels, dense/sparse captions), ``heldout`` validates the
evaluators, ``aesthetic`` is the stage-3 pool: twice the resolution, multi-aspect buckets, all
qualities, an aesthetic score to select the high-aesthetic subset by.

Byte-for-byte determinism is what lets ``dvc repro`` on a fresh clone rebuild the exact data that
``data.dvc`` tracks: every example is a pure function of ``(seed, split, index)`` (its own
``SeedSequence``), so worker count and scheduling cannot change a byte; PNGs are written with fixed
options and no metadata; every file is written atomically, so a killed run leaves no truncated
file, and a re-run renders only the images that are missing.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pixart_lab.data import scene as vocab
from pixart_lab.data.buckets import EMBEDDED_RATIOS, aspect_ratio_table
from pixart_lab.data.render import render_scene
from pixart_lab.data.scene import (
    Scene,
    aesthetic_score,
    class_label,
    class_name,
    corpus_caption,
    reserved_for_evaluation,
    sample_scene,
    scene_signature,
    sparse_caption,
)
from pixart_lab.utils.io import atomic_save, atomic_write_bytes, write_json

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "heldout", "aesthetic")
SPLIT_IDS: dict[str, int] = {split: i for i, split in enumerate(SPLITS)}
# Splits a curriculum stage trains on: they never hold a caption reserved for evaluation.
TRAINING_SPLITS: tuple[str, ...] = ("train", "aesthetic")
FORMAT_VERSION = 1
# compress_level 6 is zlib's default; fixed here because the bytes are part of the contract.
PNG_OPTIONS: dict[str, Any] = {"format": "PNG", "compress_level": 6, "optimize": False}
DATA_INFO_KEYS: tuple[str, ...] = (
    "path", "prompt", "sparse_prompt", "height", "width", "ratio", "label", "class_name",
    "aesthetic", "quality", "scene", "signature",
)  # fmt: skip
_IMAGE_NAME = re.compile(r"^(\d{6,})\.png$")


class CorpusError(RuntimeError):
    """The corpus directory cannot be (re)generated as asked."""


@dataclass
class CorpusConfig:
    """What the corpus contains. Everything but ``workers``/``chunksize`` determines its bytes."""

    seed: int = 0
    n_train: int = 20000
    n_heldout: int = 2000
    n_aesthetic: int = 4000
    base_size: int = 48
    aesthetic_base_size: int = 96
    aspect_ratios: Sequence[float] = field(default_factory=lambda: EMBEDDED_RATIOS)
    bucket_multiple: int = 8
    supersample: int = 4
    workers: int = 2
    chunksize: int = 64

    def __post_init__(self) -> None:
        # Hydra hands lists over as ListConfig; a plain tuple keeps the manifest and equality simple.
        self.aspect_ratios = tuple(float(r) for r in self.aspect_ratios)
        for name, value in self.counts().items():
            if value < 0:
                raise ValueError(f"corpus split {name!r} size must be >= 0, got {value}")
        for name in ("base_size", "aesthetic_base_size", "bucket_multiple", "supersample"):
            if getattr(self, name) < 1:
                raise ValueError(f"corpus config {name} must be >= 1, got {getattr(self, name)}")

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "heldout": self.n_heldout, "aesthetic": self.n_aesthetic}

    def content_params(self) -> dict[str, Any]:
        """The parameters the corpus bytes depend on (goes into the manifest)."""
        params = asdict(self)
        for execution_only in ("workers", "chunksize"):
            params.pop(execution_only)
        params["aspect_ratios"] = list(self.aspect_ratios)
        return params

    def buckets(self) -> dict[str, tuple[int, int]]:
        """Aspect-ratio buckets of the aesthetic split."""
        return aspect_ratio_table(self.aesthetic_base_size, self.aspect_ratios, self.bucket_multiple)


def example_rngs(
    seed: int, split: str, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for an example's description and its rendering noise.

    Separate streams keep the scene and captions fixed if the renderer's use of randomness changes,
    and let a re-run describe an example without rendering it.
    """
    describe, render = np.random.SeedSequence([seed, SPLIT_IDS[split], index]).spawn(2)
    return np.random.default_rng(describe), np.random.default_rng(render)


def image_relpath(index: int) -> str:
    return f"images/{index:06d}.png"


def describe_example(cfg: CorpusConfig, split: str, index: int) -> tuple[Scene, dict[str, Any]]:
    """The scene of example ``index`` of ``split`` and its ``data_info.json`` entry."""
    rng, _ = example_rngs(cfg.seed, split, index)
    return _describe(cfg, split, index, rng)


def _describe(
    cfg: CorpusConfig, split: str, index: int, rng: np.random.Generator
) -> tuple[Scene, dict[str, Any]]:
    if split == "aesthetic":
        table = cfg.buckets()
        height, width = table[list(table)[int(rng.integers(len(table)))]]
    else:
        height = width = cfg.base_size
    scene = sample_scene(rng, width, height)
    while split in TRAINING_SPLITS and reserved_for_evaluation(scene):
        scene = sample_scene(rng, width, height)
    label = class_label(scene)
    entry = {
        "path": image_relpath(index),
        "prompt": corpus_caption(scene, rng),
        "sparse_prompt": sparse_caption(scene, rng),
        "height": height,
        "width": width,
        "ratio": height / width,
        "label": label,
        "class_name": class_name(label),
        "aesthetic": aesthetic_score(scene, rng),
        "quality": scene.quality,
        "scene": scene.to_dict(),
        "signature": scene_signature(scene),
    }
    return scene, entry


# Per-process state set once by the pool initializer, so tasks are just (split, index).
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: CorpusConfig, out_dir: str) -> None:
    _WORKER["cfg"] = cfg
    _WORKER["out_dir"] = Path(out_dir)


def _make_example(task: tuple[str, int]) -> tuple[dict[str, Any], bool]:
    """Describe one example and render its image if the file is missing; returns (entry, rendered)."""
    split, index = task
    cfg: CorpusConfig = _WORKER["cfg"]
    describe_rng, render_rng = example_rngs(cfg.seed, split, index)
    scene, entry = _describe(cfg, split, index, describe_rng)
    target = _WORKER["out_dir"] / split / entry["path"]
    if target.is_file():
        return entry, False
    image = render_scene(scene, render_rng, supersample=cfg.supersample)
    atomic_save(target, lambda tmp: image.save(tmp, **PNG_OPTIONS))
    return entry, True


def _check_manifest(out_dir: Path, cfg: CorpusConfig) -> None:
    path = out_dir / "manifest.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())["config"]
    except (ValueError, KeyError) as err:
        raise CorpusError(
            f"{path} is not a corpus manifest ({err}); delete it or choose another out_dir"
        ) from err
    new = cfg.content_params()
    # Counts may change (extending or shrinking a split reuses the shared images); anything that
    # changes the pixels or captions of an index may not.
    changed = {
        key: (old.get(key), value)
        for key, value in new.items()
        if not key.startswith("n_") and old.get(key) != value
    }
    if changed:
        detail = ", ".join(f"{k}: {was!r} -> {now!r}" for k, (was, now) in sorted(changed.items()))
        raise CorpusError(
            f"{out_dir} holds a corpus generated with a different config ({detail}); "
            "delete it or choose another out_dir"
        )


def _remove_temp_files(directory: Path) -> None:
    # Left by a killed run (utils.io.atomic_path names them ".<target>.<random>.tmp").
    if directory.is_dir():
        for path in directory.glob(".*.tmp"):
            path.unlink(missing_ok=True)


def _clean_split_dir(split_dir: Path, n: int) -> None:
    """Remove temp files of a killed run and images beyond ``n``, so the tree equals a fresh run's."""
    _remove_temp_files(split_dir)
    _remove_temp_files(split_dir / "images")
    images = split_dir / "images"
    if images.is_dir():
        for path in images.iterdir():
            match = _IMAGE_NAME.match(path.name)
            if match and int(match.group(1)) >= n:
                path.unlink()


def _write_data_info(path: Path, entries: list[dict[str, Any]]) -> None:
    # One entry per line: still a JSON list (PixArt's format), but diffable and grep-able.
    lines = ",\n".join(json.dumps(entry, sort_keys=True) for entry in entries)
    atomic_write_bytes(path, f"[\n{lines}\n]\n".encode() if entries else b"[]\n")


def _split_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    def tally(values: list[Any]) -> dict[str, int]:
        return dict(sorted(Counter(str(v) for v in values).items()))

    return {
        "images": len(entries),
        "data_info": "data_info.json",
        "qualities": tally([e["quality"] for e in entries]),
        "kinds": tally([e["scene"]["kind"] for e in entries]),
        "sizes": tally([f"{e['height']}x{e['width']}" for e in entries]),
        "distinct_labels": len({e["label"] for e in entries}),
        "distinct_signatures": len({e["signature"] for e in entries}),
    }


def _manifest(cfg: CorpusConfig, by_split: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "generator": __name__,
        "config": cfg.content_params(),
        "counts": cfg.counts(),
        "splits": {split: _split_summary(entries) for split, entries in by_split.items()},
        "aesthetic_buckets": {key: list(hw) for key, hw in cfg.buckets().items()},
        "vocabulary": {
            "shapes": list(vocab.SHAPES),
            "colours": {name: list(rgb) for name, rgb in vocab.COLOURS.items()},
            "backgrounds": {name: list(rgb) for name, rgb in vocab.BACKGROUNDS.items()},
            "sizes": list(vocab.SIZES),
            "qualities": list(vocab.QUALITIES),
            "relations": list(vocab.RELATIONS),
            "count_words": list(vocab.COUNT_WORDS),
            "num_classes": vocab.NUM_CLASSES,
        },
    }


def generate_corpus(
    out_dir: str | Path, cfg: CorpusConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Write (or complete) the embedded corpus under ``out_dir``; returns counts and timing.

    Existing images are kept and only missing ones rendered; ``data_info.json`` files and the
    manifest are rewritten (with identical bytes for an unchanged config).
    """
    cfg = cfg if cfg is not None else CorpusConfig()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    _check_manifest(out_dir, cfg)
    counts = cfg.counts()
    _remove_temp_files(out_dir)
    for split in SPLITS:
        _clean_split_dir(out_dir / split, counts[split])
    tasks = [(split, index) for split in SPLITS for index in range(counts[split])]

    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    rendered = 0
    bar = tqdm(total=len(tasks), desc="corpus", unit="img", disable=not progress)
    if cfg.workers > 1 and len(tasks) > cfg.chunksize:
        pool = multiprocessing.Pool(
            cfg.workers, initializer=_init_worker, initargs=(cfg, str(out_dir))
        )
        results = pool.imap(_make_example, tasks, chunksize=cfg.chunksize)
    else:
        pool = None
        _init_worker(cfg, str(out_dir))
        results = map(_make_example, tasks)
    try:
        # imap yields in task order, so the entries come back sorted by (split, index).
        for (split, _), (entry, was_rendered) in zip(tasks, results):
            by_split[split].append(entry)
            rendered += was_rendered
            bar.update()
    except BaseException:
        if pool is not None:
            pool.terminate()
        raise
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()

    for split, entries in by_split.items():
        _write_data_info(out_dir / split / "data_info.json", entries)
    write_json(out_dir / "manifest.json", _manifest(cfg, by_split))
    seconds = time.perf_counter() - start
    log.info("corpus %s: %d images (%d rendered) in %.1f s", out_dir, len(tasks), rendered, seconds)
    return {
        "counts": counts,
        "total": len(tasks),
        "rendered": rendered,
        "reused": len(tasks) - rendered,
        "seconds": round(seconds, 3),
    }
