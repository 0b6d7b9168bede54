"""Streaming the feature cache: batches read shard by shard from memory-mapped safetensors files,
for caches larger than memory (PixArt-alpha's 25M images).

:class:`FeatureDataset` loads a whole split; :class:`StreamingFeatureDataset` holds one shard at a
time per loader worker. Each epoch visits the shards in a seeded order, split between DDP ranks and
DataLoader workers (every shard read by exactly one of them), mixes rows through a shuffle buffer,
and batches per aspect bucket, so a batch never mixes latent shapes (stage 3's multi-aspect
training) and nothing is loaded first. Given the seed, epoch and worker layout, the batches are the
same on every run; :class:`StreamingDataLoader` resumes mid-epoch by replaying the epoch and
dropping the batches already seen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pixart_lab.data.datamodule import FeatureDataModule, collate, feature_item
from pixart_lab.utils.device import distributed_layout

TENSORS = ("latent_mean", "latent_std", "label", "aesthetic")


def read_rows(path: Path, caption: str) -> dict[str, torch.Tensor]:
    """The tensors a training item needs from one shard, read through a memory map (``safe_open``)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            if f"{caption}_emb" not in names:
                raise KeyError(f"{path}: no '{caption}' captions cached")
            return {name: f.get_tensor(name) for name in (*TENSORS, f"{caption}_emb", f"{caption}_mask")}
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{path}: unreadable feature shard ({e})") from e


class StreamingFeatureDataset(IterableDataset):
    """One split's shards streamed as bucket-homogeneous, collated batches (see the module docstring).

    ``shuffle_buffer`` rows are mixed at a time (across the shards a worker has open in turn);
    ``min_aesthetic`` keeps the rows scored at least that (stage 3). ``epoch`` selects the shard order
    and buffer draws; :class:`StreamingDataLoader` advances it.
    """

    def __init__(
        self,
        split_dir: str | Path,
        scaling_factor: float,
        batch_size: int,
        caption: str = "dense",
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 4096,
        min_aesthetic: float | None = None,
        drop_last: bool = True,
        text_len: int | None = None,
    ):
        self.split_dir = Path(split_dir)
        index_path = self.split_dir / "index.json"
        if not index_path.is_file():
            raise FileNotFoundError(f"feature index not found: {index_path} (run the extract_features stage)")
        self.shards: list[dict] = json.loads(index_path.read_text())["shards"]
        if not self.shards:
            raise ValueError(f"{self.split_dir}: no cached examples")
        # Item indices as FeatureDataset numbers them: shards in index order, rows in shard order.
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + shard["count"])
        self.scaling_factor, self.batch_size, self.caption = scaling_factor, batch_size, caption
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, max(1, shuffle_buffer)
        self.min_aesthetic, self.drop_last, self.text_len = min_aesthetic, drop_last, text_len
        self.epoch = 0

    def shard_order(self) -> list[int]:
        """This epoch's shard order (seeded permutation when shuffling)."""
        if not self.shuffle:
            return list(range(len(self.shards)))
        return torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()

    def assigned_shards(self) -> tuple[list[int], int]:
        """The shards of this DDP rank's DataLoader worker (round robin over the epoch's order) and its id."""
        rank, world_size = distributed_layout()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, readers = rank * workers + worker, world_size * workers
        return self.shard_order()[reader::readers], reader

    def items(self, shard_ids: list[int]) -> Iterator[dict]:
        """Every kept row of ``shard_ids``, shard by shard (one shard's tensors in memory at a time)."""
        for shard_id in shard_ids:
            shard = self.shards[shard_id]
            tensors = read_rows(self.split_dir / shard["file"], self.caption)
            hw = (shard["height"], shard["width"])
            for row in range(shard["count"]):
                if self.min_aesthetic is None or tensors["aesthetic"][row] >= self.min_aesthetic:
                    yield feature_item(tensors, row, hw, self.scaling_factor, self.caption, self.offsets[shard_id] + row)

    def shuffled(self, items: Iterator[dict], generator: torch.Generator) -> Iterator[dict]:
        """``items`` through a shuffle buffer: each new item replaces a random one, which is emitted."""
        if not self.shuffle:
            yield from items
            return
        buffer: list[dict] = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            slot = int(torch.randint(len(buffer), (1,), generator=generator))
            buffer[slot], item = item, buffer[slot]
            yield item
        for i in torch.randperm(len(buffer), generator=generator).tolist():
            yield buffer[i]

    def __iter__(self) -> Iterator[dict]:
        shard_ids, reader = self.assigned_shards()
        generator = torch.Generator().manual_seed((self.seed + self.epoch) * 1_000_003 + reader)
        pending: dict[tuple[int, int], list[dict]] = {}
        for item in self.shuffled(self.items(shard_ids), generator):
            group = pending.setdefault(tuple(item["hw"].int().tolist()), [])
            group.append(item)
            if len(group) == self.batch_size:
                yield collate(group, self.text_len)
                group.clear()
        if not self.drop_last:
            for group in pending.values():
                if group:
                    yield collate(group, self.text_len)


class StreamingDataLoader(DataLoader):
    """A DataLoader of :class:`StreamingFeatureDataset` batches that advances its epoch and resumes mid-epoch.

    Lightning saves ``state_dict()`` with each checkpoint and calls ``load_state_dict`` on resume; the
    resumed epoch is read again and its first ``batches`` dropped (their shard reads are repeated,
    their training is not)."""

    def __init__(self, dataset: StreamingFeatureDataset, num_workers: int = 0):
        super().__init__(dataset, batch_size=None, num_workers=num_workers, persistent_workers=False)
        self.epoch = 0
        self.resume_at: tuple[int, int] | None = None
        self.position = {"epoch": 0, "batches": 0}

    def __iter__(self):
        # The epoch advances when its iteration starts (Lightning stops at max_steps or limit_val_batches
        # without exhausting it), as BucketBatchSampler's does.
        skip = self.resume_at[1] if self.resume_at and self.resume_at[0] == self.epoch else 0
        self.dataset.epoch = self.epoch  # before the workers start: they receive this copy of the dataset
        self.position = {"epoch": self.epoch, "batches": skip}
        self.epoch, self.resume_at = self.epoch + 1, None
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self.position["batches"] = i + 1
                yield batch

    def state_dict(self) -> dict:
        return dict(self.position)

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.resume_at = (self.epoch, int(state["batches"]))
        self.position = dict(state)


class StreamingFeatureDataModule(FeatureDataModule):
    """:class:`FeatureDataModule` whose loaders stream the cache (``train_stage data=streaming``)."""

    def __init__(self, *args, shuffle_buffer: int = 4096, **kwargs):
        super().__init__(*args, **kwargs)
        self.shuffle_buffer = shuffle_buffer

    def streamed(self, split: str, shuffle: bool, min_aesthetic: float | None = None) -> StreamingFeatureDataset:
        scaling = float(self.manifest["vae"]["scaling_factor"])
        return StreamingFeatureDataset(
            self.features_dir / split, scaling, self.batch_size, self.caption, shuffle=shuffle, seed=self.seed,
            shuffle_buffer=self.shuffle_buffer, min_aesthetic=min_aesthetic, drop_last=shuffle, text_len=self.text_len,
        )  # fmt: skip

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set = self.streamed(self.train_split, shuffle=True, min_aesthetic=self.min_aesthetic)
        if self.val_split and self.val_set is None:
            self.val_set = self.streamed(self.val_split, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return StreamingDataLoader(self.train_set, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return StreamingDataLoader(self.val_set, self.num_workers) if self.val_set else []
