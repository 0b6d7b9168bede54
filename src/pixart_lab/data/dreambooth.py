"""DreamBooth batches: a few subject ("instance") examples beside class examples, from the feature cache.

DreamBooth (Ruiz et al., 2022, Sec. 3.3) trains on the subject images and, for its prior-preservation
loss, on images the frozen base model generated for the class prompt, in the same batches. Both sets
are cached like any split (``features/<split>/*.safetensors`` by ``data.features.extract_split``):
``<features_dir>/instance`` and ``<features_dir>/class``. Every batch holds ``instance_per_batch``
subject examples, then ``class_per_batch`` class examples, and says which rows are which
(``batch["instance"]``). An epoch is one pass over the class images; subject images are drawn from
successive shuffles of the few there are, so each is seen equally often.
"""

from __future__ import annotations

import json
from functools import partial
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Sampler

from pixart_lab.data.corpus import PNG_OPTIONS
from pixart_lab.data.datamodule import FeatureDataset, collate
from pixart_lab.data.features import SplitSpec, extract_split
from pixart_lab.data.readers import FolderReader
from pixart_lab.data.records import Record, SkipReport
from pixart_lab.utils.io import atomic_dir, write_json

INSTANCE_SPLIT, CLASS_SPLIT = "instance", "class"


def class_prompt(prompt: str, identifier: str) -> str:
    """``prompt`` without the identifier word: "a large sks circle ..." -> "a large circle ..."."""
    words = prompt.split()
    if identifier not in words:
        raise ValueError(f"prompt {prompt!r} does not contain the identifier {identifier!r}")
    return " ".join(w for w in words if w != identifier)


def write_image_folder(images: torch.Tensor, captions: Sequence[str], out_dir: str | Path, stem: str) -> list[Record]:
    """uint8 images [N, 3, H, W] as ``stem_NNNN.png`` + ``.txt`` captions in ``out_dir`` (replaced atomically)."""
    from PIL import Image

    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    with atomic_dir(out_dir) as tmp:
        for i, (image, caption) in enumerate(zip(images, captions)):
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(tmp / f"{stem}_{i:04d}.png", **PNG_OPTIONS)
            (tmp / f"{stem}_{i:04d}.txt").write_text(caption)
    return FolderReader(out_dir).records()


def generate_class_images(
    instance: Sequence[Record], identifier: str, per_prompt: int, generate: Callable[[list[str]], torch.Tensor], out_dir: str | Path
) -> list[Record]:
    """The prior-preservation set: ``per_prompt`` base-model images of each subject caption without the identifier."""
    prompts = [class_prompt(r.dense_caption, identifier) for r in instance for _ in range(per_prompt)]
    return write_image_folder(generate(prompts), prompts, out_dir, "class")


def cache_features(
    splits: dict[str, Sequence[Record]], out_dir: str | Path, vae, text_encoder, size: int, batch_size: int = 64
) -> dict[str, int]:
    """VAE posteriors and T5 embeddings of each split (``extract_split``), written afresh; returns counts."""
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for name, records in splits.items():
            report = SkipReport(source=name)
            result = extract_split(records, SplitSpec(name, size), tmp / name, vae, text_encoder, report,
                                   batch_size=batch_size, progress=False)  # fmt: skip
            if report.total_skipped:
                raise ValueError(f"{name} images unusable: {report.as_dict()['by_reason']}")
            counts[name] = result["count"]
        write_json(tmp / "manifest.json", {"vae": {"scaling_factor": float(vae.config.scaling_factor)}, "splits": counts})
    return counts


class InstanceClassSampler(Sampler[list[int]]):
    """Index batches over ``ConcatDataset([instance, class])``: instance rows first, then class rows."""

    def __init__(self, n_instance: int, n_class: int, instance_per_batch: int, class_per_batch: int, seed: int = 0):
        if instance_per_batch < 1:
            raise ValueError(f"instance_per_batch must be >= 1, got {instance_per_batch}")
        if class_per_batch and n_class < class_per_batch:
            raise ValueError(f"class_per_batch={class_per_batch} but only {n_class} class images are cached")
        self.n_instance, self.n_class = n_instance, n_class
        self.instance_per_batch, self.class_per_batch, self.seed = instance_per_batch, class_per_batch, seed
        self.epoch = 0

    def __len__(self) -> int:
        if self.class_per_batch:
            return self.n_class // self.class_per_batch
        return max(1, self.n_instance // self.instance_per_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n_batches = len(self)
        needed = n_batches * self.instance_per_batch
        shuffles = -(-needed // self.n_instance)  # ceil
        instances = torch.cat([torch.randperm(self.n_instance, generator=generator) for _ in range(shuffles)])
        classes = torch.randperm(self.n_class, generator=generator) + self.n_instance
        for b in range(n_batches):
            inst = instances[b * self.instance_per_batch : (b + 1) * self.instance_per_batch]
            cls = classes[b * self.class_per_batch : (b + 1) * self.class_per_batch]
            yield [*inst.tolist(), *cls.tolist()]
        self.epoch += 1


def collate_tagged(items: Sequence[dict], n_instance: int) -> dict:
    """:func:`collate` plus ``instance``: True for rows drawn from the instance split."""
    batch = collate(items)
    batch["instance"] = torch.tensor([bool(item["source_index"] < n_instance) for item in items])
    return batch


class _Tagged(ConcatDataset):
    """A concatenation whose items remember their position in it (instance rows come first)."""

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "source_index": index}


class DreamBoothDataModule(L.LightningDataModule):
    """Training batches mixing the cached subject and class examples (no validation split)."""

    def __init__(
        self,
        features_dir: str | Path,
        instance_per_batch: int = 4,
        class_per_batch: int = 4,
        seed: int = 0,
    ):
        super().__init__()
        self.features_dir = Path(features_dir)
        self.instance_per_batch, self.class_per_batch, self.seed = instance_per_batch, class_per_batch, seed
        self.instance_set: FeatureDataset | None = None
        self.class_set: FeatureDataset | None = None

    @property
    def batch_size(self) -> int:
        return self.instance_per_batch + self.class_per_batch

    def setup(self, stage: str | None = None) -> None:
        manifest = self.features_dir / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"DreamBooth feature manifest not found: {manifest}")
        scaling = float(json.loads(manifest.read_text())["vae"]["scaling_factor"])
        if self.instance_set is None:
            self.instance_set = FeatureDataset(self.features_dir / INSTANCE_SPLIT, scaling)
            self.class_set = FeatureDataset(self.features_dir / CLASS_SPLIT, scaling) if self.class_per_batch else None

    def train_dataloader(self) -> DataLoader:
        n_instance = len(self.instance_set)
        n_class = len(self.class_set) if self.class_set is not None else 0
        sampler = InstanceClassSampler(n_instance, n_class, self.instance_per_batch, self.class_per_batch, self.seed)
        datasets = [self.instance_set] + ([self.class_set] if self.class_set is not None else [])
        return DataLoader(
            _Tagged(datasets), batch_sampler=sampler, collate_fn=partial(collate_tagged, n_instance=n_instance)
        )
