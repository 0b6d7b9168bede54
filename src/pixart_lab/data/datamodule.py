"""Lightning DataModule over the feature cache: VAE posterior moments plus caption embeddings.

Items carry the cached posterior's mean and std already multiplied by the VAE scaling factor; the
training step draws z = mean + std * eps (:func:`sample_latents`), as PixArt samples from the VAE's
DiagonalGaussian at every step rather than using its mean. Drawing there, from a generator seeded
by the step, keeps a resumed run on the same random sequence. Batches never mix aspect buckets
(stage 3); caption embeddings are padded to one length per batch, the mask marking valid tokens.
Loaders are resumable mid-epoch: Lightning stores their ``state_dict`` in checkpoints.
"""

from __future__ import annotations

import json
import math
from functools import partial
from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pixart_lab.data.features import read_shard
from pixart_lab.utils.device import distributed_layout


class FeatureDataset(Dataset):
    """All shards of one split in memory; item = latent sample, caption embedding/mask, label, bucket."""

    def __init__(
        self,
        split_dir: str | Path,
        scaling_factor: float,
        caption: str = "dense",
        min_aesthetic: float | None = None,
    ):
        self.split_dir = Path(split_dir)
        index_path = self.split_dir / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"feature index not found: {index_path} (run the extract_features stage)")
        self.scaling_factor = scaling_factor
        self.caption = caption
        self.keys: list[str] = []
        self.items: list[tuple[int, int]] = []  # (shard, row)
        self.shards: list[dict[str, torch.Tensor]] = []
        self.sizes: list[tuple[int, int]] = []
        for shard_info in json.loads(index_path.read_text())["shards"]:
            tensors, keys = read_shard(self.split_dir / shard_info["file"], shard_info.get("sha256"))
            if f"{caption}_emb" not in tensors:
                raise KeyError(f"{self.split_dir / shard_info['file']}: no '{caption}' captions cached")
            rows = range(len(keys))
            if min_aesthetic is not None:
                rows = [i for i in rows if tensors["aesthetic"][i] >= min_aesthetic]
            shard_id = len(self.shards)
            self.shards.append(tensors)
            self.sizes.append((shard_info["height"], shard_info["width"]))
            self.items.extend((shard_id, i) for i in rows)
            self.keys.extend(keys[i] for i in rows)
        if not self.items:
            raise ValueError(f"{self.split_dir}: no cached examples (min_aesthetic={min_aesthetic})")

    def __len__(self) -> int:
        return len(self.items)

    def bucket_of(self, index: int) -> tuple[int, int]:
        return self.sizes[self.items[index][0]]

    def __getitem__(self, index: int) -> dict:
        shard_id, row = self.items[index]
        return feature_item(self.shards[shard_id], row, self.sizes[shard_id], self.scaling_factor, self.caption, index)


def feature_item(
    shard: dict[str, torch.Tensor], row: int, hw: tuple[int, int], scaling_factor: float, caption: str, index: int
) -> dict:
    """Row ``row`` of a shard's tensors as a training item: scaled posterior moments, caption embedding
    and mask, label, aesthetic score, bucket size ``hw``; ``index`` identifies it in the split."""
    return {
        "latent_mean": shard["latent_mean"][row] * scaling_factor,
        "latent_std": shard["latent_std"][row] * scaling_factor,
        "caption_emb": shard[f"{caption}_emb"][row].float(),
        "caption_mask": shard[f"{caption}_mask"][row].long(),
        "label": shard["label"][row],
        "aesthetic": shard["aesthetic"][row],
        "hw": torch.tensor(hw, dtype=torch.float32),
        "index": index,
    }


def sample_latents(batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """A posterior sample z = mean + std * eps of every item (moments already scaled)."""
    mean = batch["latent_mean"]
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + batch["latent_std"] * eps


def collate(items: Sequence[dict], text_len: int | None = None) -> dict:
    """Stack items; pad caption embeddings and masks to ``text_len`` (default: the batch's longest)."""
    length = text_len or max(int(item["caption_mask"].shape[0]) for item in items)
    emb = torch.zeros(len(items), length, items[0]["caption_emb"].shape[-1])
    mask = torch.zeros(len(items), length, dtype=torch.long)
    for i, item in enumerate(items):
        n = min(length, item["caption_mask"].shape[0])
        emb[i, :n], mask[i, :n] = item["caption_emb"][:n], item["caption_mask"][:n]
    stacked = [  # latents, labels, hw, control...: the items' other tensors
        k for k, v in items[0].items() if isinstance(v, torch.Tensor) and k not in ("caption_emb", "caption_mask", "index")
    ]
    batch = {k: torch.stack([item[k] for item in items]) for k in stacked}
    batch.update(caption_emb=emb, caption_mask=mask, index=torch.tensor([item["index"] for item in items]))
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches that never mix aspect buckets (PixArt's multi-scale training); seeded per epoch.

    Each iteration is the next epoch. ``resume_at = (epoch, batches)`` skips the first ``batches``
    of that epoch (a resumed run's position); a run stopped after an epoch's last batch resumes with
    an empty remainder of it, then the next epoch from its beginning.

    Under DDP (``world_size`` ranks) every rank draws the same epoch and takes every
    ``world_size``-th batch from its ``rank``-th on, and all take the same number, as DDP steps them
    together: ``drop_last`` drops the epoch's last ``< world_size`` batches, otherwise its first ones
    are repeated to fill the last round (as torch's ``DistributedSampler`` pads).
    """

    def __init__(
        self, buckets: Sequence[tuple[int, int]], batch_size: int, shuffle: bool, seed: int, drop_last: bool,
        rank: int = 0, world_size: int = 1,
    ):  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1} (world_size={world_size})")
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size
        self.groups: dict[tuple[int, int], list[int]] = {}
        for i, bucket in enumerate(buckets):
            self.groups.setdefault(bucket, []).append(i)
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None

    @property
    def start(self) -> int:
        """Batches of the current epoch already seen before a resume."""
        return self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _epoch_batches(self) -> list[list[int]]:
        """The epoch's batches of all ranks, the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = []
        for indices in self.groups.values():
            order = [indices[i] for i in torch.randperm(len(indices), generator=generator)] if self.shuffle else indices
            for i in range(0, len(order), self.batch_size):
                batch = order[i : i + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator)]
        return batches

    def _batches(self) -> list[list[int]]:
        """This rank's share of the epoch's batches."""
        batches = self._epoch_batches()
        rounds = len(self)
        dealt = [batches[i % len(batches)] for i in range(rounds * self.world_size)] if batches else []
        return dealt[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        # The epoch advances when its batches are drawn, not when the last one is consumed: Lightning
        # stops after len(loader) batches and never exhausts the iterator (every epoch was epoch 0).
        batches = self._batches()[self.start :]
        self.epoch, self.resume_at = self.epoch + 1, None
        return iter(batches)

    def __len__(self) -> int:
        """This rank's batches per epoch."""
        if self.drop_last:
            return sum(len(g) // self.batch_size for g in self.groups.values()) // self.world_size
        return math.ceil(sum(math.ceil(len(g) / self.batch_size) for g in self.groups.values()) / self.world_size)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a :class:`BucketBatchSampler` that can resume mid-epoch.

    It counts the batches it has handed out; Lightning saves ``state_dict()`` with each checkpoint
    and calls ``load_state_dict`` on resume, so the resumed run sees the batches that come next.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = {"epoch": 0, "batches": 0}

    def __iter__(self):
        sampler = self.batch_sampler
        self.position = {"epoch": sampler.epoch, "batches": sampler.start}
        for batch in super().__iter__():
            self.position["batches"] += 1
            yield batch

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.set_epoch(int(state["epoch"]))
        self.batch_sampler.resume_at = (int(state["epoch"]), int(state["batches"]))
        self.position = dict(state)


class FeatureDataModule(L.LightningDataModule):
    """Train/validation loaders over ``features/<split>`` for one curriculum stage."""

    def __init__(
        self,
        features_dir: str | Path,
        train_split: str = "train",
        val_split: str | None = "heldout",
        caption: str = "dense",
        batch_size: int = 64,
        num_workers: int = 0,
        min_aesthetic: float | None = None,
        text_len: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.features_dir = Path(features_dir)
        self.train_split, self.val_split, self.caption = train_split, val_split, caption
        self.batch_size, self.num_workers, self.min_aesthetic = batch_size, num_workers, min_aesthetic
        self.text_len, self.seed = text_len, seed
        self.train_set: FeatureDataset | None = None
        self.val_set: FeatureDataset | None = None

    @property
    def manifest(self) -> dict:
        return json.loads(self.input_files()[0].read_text())

    def input_files(self) -> list[Path]:
        """The cache's manifest and the used splits' indices (which hold every shard's SHA-256)."""
        splits = [s for s in (self.train_split, self.val_split) if s]
        files = [self.features_dir / "manifest.json", *(self.features_dir / s / "index.json" for s in splits)]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"feature cache file not found: {path} (run the extract_features stage)")
        return files

    def make_dataset(self, split: str, min_aesthetic: float | None = None) -> FeatureDataset:
        scaling = float(self.manifest["vae"]["scaling_factor"])
        return FeatureDataset(self.features_dir / split, scaling, self.caption, min_aesthetic)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.make_dataset(self.train_split, self.min_aesthetic)
        if self.val_split and self.val_set is None:
            self.val_set = self.make_dataset(self.val_split)

    def _loader(self, dataset: FeatureDataset, shuffle: bool) -> DataLoader:
        rank, world_size = distributed_layout()
        buckets = [dataset.bucket_of(i) for i in range(len(dataset))]
        sampler = BucketBatchSampler(buckets, self.batch_size, shuffle, self.seed, shuffle, rank, world_size)
        return ResumableDataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=partial(collate, text_len=self.text_len),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        loader = self._loader(self.train_set, shuffle=True)
        if len(loader) == 0:
            ranks = loader.batch_sampler.world_size
            short = f"the buckets hold fewer than {ranks} full batches (one per DDP rank)" if ranks > 1 else "no bucket holds a full batch"
            sizes = {bucket: len(group) for bucket, group in loader.batch_sampler.groups.items()}
            raise ValueError(
                f"{self.features_dir / self.train_split}: {short} of {self.batch_size} "
                f"(examples per bucket: {sizes}); lower the batch size"
            )
        return loader

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False) if self.val_set else []
