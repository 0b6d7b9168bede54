from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from pixart_lab.data.datamodule import FeatureDataset
from pixart_lab.data.features import SplitSpec, cache_split
from pixart_lab.data.records import Record, SkipReport
from pixart_lab.data.streaming import StreamingDataLoader, StreamingFeatureDataModule, StreamingFeatureDataset
from pixart_lab.utils.io import write_json



SHAPES = [(64, 64), (48, 96), (96, 48), (64, 64), (80, 56)]  # (height, width): buckets 1.0, 0.5, 2.0, 1.0, 1.33


def encode(records, size, report):
    """Tensors that identify their record: latent_mean holds the record number, shapes as a 4x VAE gives."""
    numbers = torch.tensor([int(r.key.split("/")[1]) for r in records], dtype=torch.float32)
    n, (height, width) = len(records), size
    lengths = numbers.long() % 5 + 1
    return {
        "latent_mean": numbers.view(n, 1, 1, 1).expand(n, 4, height // 4, width // 4).contiguous(),
        "latent_std": torch.full((n, 4, height // 4, width // 4), 0.5),
        "dense_emb": (numbers.view(n, 1, 1) + torch.arange(6).view(1, 6, 1) / 10).expand(n, 6, 8).half().contiguous(),
        "dense_mask": (torch.arange(6).view(1, 6) < lengths.view(n, 1)).to(torch.uint8),
        "label": numbers.long(),
        "aesthetic": numbers % 10,
    }, [r.key for r in records]


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory):
    """24 train rows in shards of 8 (one bucket), 10 aesthetic rows in five aspect buckets."""
    root = tmp_path_factory.mktemp("streamed_features")
    splits = {"train": (SplitSpec("train", 64), 24), "aesthetic": (SplitSpec("aesthetic", 64, (0.5, 0.75, 1.0, 1.33, 2.0)), 10)}
    for name, (spec, count) in splits.items():
        records = [Record(f"{name}/{i:03d}", None, "a caption", height=SHAPES[i % 5][0], width=SHAPES[i % 5][1]) for i in range(count)]
        cache_split(records, spec, root / name, encode, SkipReport(), shard_size=8, progress=False)
    write_json(root / "manifest.json", {"vae": {"scaling_factor": 2.0}})
    return root


def stream(features, split, batch_size=2, **kwargs):
    return StreamingFeatureDataset(features / split, 2.0, batch_size, **kwargs)


def indices(batches):
    return [b["index"].tolist() for b in batches]


def test_streamed_rows_are_the_in_memory_dataset_rows(tiny_features):
    memory = FeatureDataset(tiny_features / "train", 2.0)
    batches = list(stream(tiny_features, "train", batch_size=5, shuffle=False, drop_last=False))
    assert [len(b["index"]) for b in batches] == [5, 5, 5, 5, 4]
    assert sum(indices(batches), []) == list(range(len(memory))) == list(range(24))
    for batch in batches:
        for i, index in enumerate(batch["index"].tolist()):
            item = memory[index]
            torch.testing.assert_close(batch["latent_mean"][i], item["latent_mean"], rtol=0, atol=0)
            torch.testing.assert_close(batch["latent_std"][i], item["latent_std"], rtol=0, atol=0)
            n = int(item["caption_mask"].sum())
            assert int(batch["caption_mask"][i].sum()) == n
            torch.testing.assert_close(batch["caption_emb"][i, :n], item["caption_emb"][:n], rtol=0, atol=0)


def test_shuffled_epochs_are_seeded_bucket_homogeneous_and_cover_every_row_once(tiny_features):
    dataset = stream(tiny_features, "aesthetic", shuffle=True, seed=3, shuffle_buffer=4, drop_last=False)
    epochs = []
    for epoch in (0, 1):
        dataset.epoch = epoch
        batches = list(dataset)
        for batch in batches:
            assert len({tuple(hw.tolist()) for hw in batch["hw"]}) == 1  # one aspect bucket per batch
            height, width = batch["hw"][0].int().tolist()
            assert batch["latent_mean"].shape[-2:] == (height // 4, width // 4)
        epochs.append(indices(batches))
        assert sorted(sum(epochs[-1], [])) == list(range(10))
    assert epochs[0] != epochs[1]
    again = stream(tiny_features, "aesthetic", shuffle=True, seed=3, shuffle_buffer=4, drop_last=False)
    assert indices(again) == epochs[0]


def test_drop_last_and_min_aesthetic_as_the_in_memory_module(tiny_features):
    kept = list(stream(tiny_features, "aesthetic", shuffle=False, drop_last=False, min_aesthetic=5.0))
    memory = FeatureDataset(tiny_features / "aesthetic", 2.0, min_aesthetic=5.0)
    labels = sorted(label for batch in kept for label in batch["label"].tolist())
    assert labels == sorted(int(memory[i]["label"]) for i in range(len(memory))) == [5, 6, 7, 8, 9]  # aesthetic = number % 10
    full_batches = stream(tiny_features, "train", batch_size=5, shuffle=True, drop_last=True)
    assert [len(b) for b in indices(full_batches)] == [5, 5, 5, 5]


def test_loader_workers_share_the_shards_and_resume_mid_epoch(tiny_features):
    def loader(workers):
        return StreamingDataLoader(stream(tiny_features, "train", shuffle=True, seed=5, shuffle_buffer=3), workers)

    two = loader(2)
    reference = indices(two) + indices(two)  # two epochs; 3 shards dealt to 2 workers
    assert all(sorted(sum(half, [])) == list(range(24)) for half in (reference[:12], reference[12:]))
    assert reference[:12] != reference[12:]
    assert indices(loader(2)) == reference[:12]  # the same seed and layout, the same batches

    first = loader(2)
    batches = iter(first)
    seen = indices(next(batches) for _ in range(5))
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 5}
    del batches
    resumed = loader(2)
    resumed.load_state_dict(state)
    assert seen + indices(resumed) + indices(resumed) == reference


def test_train_stage_selects_the_streaming_module_by_config(tiny_features):
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[2] / "conf"), version_base="1.3"):
        cfg = compose("train_stage", overrides=["data_module=streaming", f"paths.features_dir={tiny_features}", "stage=3_aesthetic",
                                                "stage.batch_size=2", "stage.min_aesthetic=null"])  # fmt: skip
    module = instantiate(cfg.data_module, num_workers=0)
    assert isinstance(module, StreamingFeatureDataModule) and module.shuffle_buffer == 4096
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert batch["latent_mean"].shape[0] == 2 and batch["caption_emb"].dim() == 3
    assert module.input_files()[0] == tiny_features / "manifest.json"  # the run fingerprint hashes the same files


def test_a_missing_index_and_a_missing_caption_kind_are_named(tiny_features, tmp_path):
    with pytest.raises(FileNotFoundError, match="feature index not found: .*index.json"):
        stream(tmp_path, "train")
    with pytest.raises(KeyError, match=r"1p0-0000[0-2].safetensors: no 'other' captions cached"):
        next(iter(stream(tiny_features, "train", caption="other")))
