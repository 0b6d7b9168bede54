import json
import math

import pytest
import torch

from pixart_lab.data.datamodule import BucketBatchSampler, FeatureDataModule, sample_latents
from pixart_lab.data.features import SplitSpec, extract_split, read_shard
from pixart_lab.data.readers import PixArtInfoReader
from pixart_lab.data.records import Record, SkipReport

SPECS = {
    "train": SplitSpec("train", 64),
    "heldout": SplitSpec("heldout", 64),
    "aesthetic": SplitSpec("aesthetic", 128, aspect_ratios=(0.5, 0.75, 1.0, 1.33, 2.0)),
}


def records(corpus, split):
    return PixArtInfoReader(corpus / split / "data_info.json", key_prefix=f"{split}/").records()


def extract(corpus, out, vae, text_encoder, split="train", **kwargs):
    report = SkipReport()
    stats = extract_split(records(corpus, split), SPECS[split], out / split, vae, text_encoder, report,
                          shard_size=8, batch_size=4, progress=False, **kwargs)  # fmt: skip
    return stats, report


def shard_bytes(split_dir):
    return {p.name: p.read_bytes() for p in sorted(split_dir.glob("*.safetensors"))}


def test_shards_hold_posteriors_and_trimmed_caption_embeddings(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    stats, report = extract(tiny_corpus, tmp_path, tiny_vae, tiny_text_encoder)
    assert stats["count"] == 24 and stats["computed_images"] == 24 and report.total_skipped == 0
    index = json.loads((tmp_path / "train" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [8, 8, 8]
    tensors, keys = read_shard(tmp_path / "train" / index["shards"][0]["file"])
    assert keys == [f"train/images/{i:06d}.png" for i in range(8)]
    assert tensors["latent_mean"].shape == (8, 4, 16, 16) and (tensors["latent_std"] > 0).all()
    assert tensors["dense_emb"].dtype == torch.float16
    mask = tensors["dense_mask"]
    assert mask.shape[1] == int(mask.sum(1).max())  # trimmed to the longest caption in the shard
    # the cached embedding equals a fresh encoding at the valid positions
    recs = records(tiny_corpus, "train")[:8]
    emb, fresh_mask = tiny_text_encoder.encode([r.dense_caption for r in recs])
    n = int(fresh_mask[0].sum())
    torch.testing.assert_close(tensors["dense_emb"][0, :n].float(), emb[0, :n], atol=2e-3, rtol=1e-2)
    assert tensors["label"].tolist() == [r.label for r in recs]


def test_resume_after_an_interrupted_run_gives_identical_shards(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    extract(tiny_corpus, tmp_path / "whole", tiny_vae, tiny_text_encoder)

    class Killed(RuntimeError):
        pass

    def die_after_first(path):
        raise Killed(path)

    with pytest.raises(Killed):
        extract(tiny_corpus, tmp_path / "resumed", tiny_vae, tiny_text_encoder, on_shard_written=die_after_first)
    assert len(shard_bytes(tmp_path / "resumed" / "train")) == 1
    # a torn temporary file left by a kill is neither read nor kept as a shard
    (tmp_path / "resumed" / "train" / ".1p0-00001.safetensors.x.tmp").write_bytes(b"torn")
    stats, _ = extract(tiny_corpus, tmp_path / "resumed", tiny_vae, tiny_text_encoder)
    assert stats["computed_images"] == 16  # the finished shard was skipped
    assert shard_bytes(tmp_path / "resumed" / "train") == shard_bytes(tmp_path / "whole" / "train")


def test_a_truncated_shard_is_recomputed(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    extract(tiny_corpus, tmp_path, tiny_vae, tiny_text_encoder)
    good = shard_bytes(tmp_path / "train")
    victim = tmp_path / "train" / "1p0-00002.safetensors"
    victim.write_bytes(victim.read_bytes()[:100])
    stats, _ = extract(tiny_corpus, tmp_path, tiny_vae, tiny_text_encoder)
    assert stats["computed_images"] == 8 and shard_bytes(tmp_path / "train") == good


def test_unreadable_images_are_skipped_and_counted(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    good = records(tiny_corpus, "train")[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[0].image_path.read_bytes()[:60])
    bad = Record("bad", broken, "a red circle", "circle", 0, 5.0, 64, 64)
    report = SkipReport()
    stats = extract_split([*good, bad], SPECS["train"], tmp_path / "f", tiny_vae, tiny_text_encoder, report,
                          progress=False)  # fmt: skip
    assert stats["count"] == 3 and report.total_skipped == 1
    assert next(iter(report.as_dict()["by_reason"])).startswith("corrupt image")


@pytest.fixture
def feature_dir(tiny_features):
    return tiny_features


def test_datamodule_batches_scaled_posteriors_and_padded_captions(feature_dir):
    dm = FeatureDataModule(feature_dir, batch_size=4, caption="sparse", seed=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert batch["latent_mean"].shape == batch["latent_std"].shape == (4, 4, 16, 16)
    assert batch["caption_emb"].shape[:2] == batch["caption_mask"].shape
    assert batch["caption_emb"].dtype == torch.float32 and batch["label"].dtype == torch.int64
    assert len(dm.train_dataloader()) == 6 and len(dm.val_dataloader()) == 3
    # latents are posterior samples times the scaling factor: centred on the scaled mean, seeded draws
    shard = dm.train_set.shards[0]
    item = dm.train_set[0]
    torch.testing.assert_close(item["latent_mean"], 2.0 * shard["latent_mean"][0])
    one = {k: item[k].expand(2000, *item[k].shape) for k in ("latent_mean", "latent_std")}
    draws = sample_latents(one, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), item["latent_mean"], atol=4 * float(item["latent_std"].max()) / 2000**0.5, rtol=0)
    torch.testing.assert_close(draws.std(0), item["latent_std"], atol=0.1 * float(item["latent_std"].max()), rtol=0.1)
    assert torch.equal(draws, sample_latents(one, torch.Generator().manual_seed(0)))


def test_aesthetic_batches_never_mix_buckets_and_filter_by_score(feature_dir, tiny_corpus):
    dm = FeatureDataModule(feature_dir, train_split="aesthetic", val_split=None, batch_size=2, min_aesthetic=5.0)
    dm.setup()
    info = json.loads((tiny_corpus / "aesthetic" / "data_info.json").read_text())
    assert len(dm.train_set) == sum(e["aesthetic"] >= 5.0 for e in info) > 0
    for batch in dm.train_dataloader():
        assert len({tuple(hw.tolist()) for hw in batch["hw"]}) == 1
        height, width = batch["hw"][0].int().tolist()
        assert batch["latent_mean"].shape[-2:] == (height // 4, width // 4)


def test_bucket_sampler_is_seeded_and_covers_every_index_once():
    buckets = [(1, 1)] * 7 + [(2, 1)] * 5
    sampler = BucketBatchSampler(buckets, batch_size=3, shuffle=True, seed=3, drop_last=False)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(12))
    assert all(len({buckets[i] for i in b}) == 1 for b in first)
    assert list(BucketBatchSampler(buckets, 3, True, 3, False)) == first
    assert list(sampler) != first  # the next epoch reshuffles


def test_bucket_sampler_deals_each_ddp_rank_its_own_batches_and_the_same_number():
    buckets = [(1, 1)] * 7 + [(2, 1)] * 5  # 3 full batches of 3 (2 + 1), 5 with the partial ones
    full = list(BucketBatchSampler(buckets, 3, True, 3, drop_last=True))
    trained = [list(BucketBatchSampler(buckets, 3, True, 3, drop_last=True, rank=r, world_size=2)) for r in (0, 1)]
    assert len(full) == 3 and trained == [full[:1], full[1:2]]  # the third is dropped
    epoch = list(BucketBatchSampler(buckets, 3, True, 3, drop_last=False))
    validated = [BucketBatchSampler(buckets, 3, True, 3, drop_last=False, rank=r, world_size=2) for r in (0, 1)]
    assert [len(v) for v in validated] == [3, 3]
    assert [list(v) for v in validated] == [epoch[0::2], [*epoch[1::2], epoch[0]]]  # the first batch fills the round
    with pytest.raises(ValueError, match="rank 2 outside 0..1"):
        BucketBatchSampler(buckets, 3, True, 3, False, rank=2, world_size=2)


def test_datamodule_loaders_take_the_ddp_ranks_share(feature_dir, monkeypatch):
    def loaders(rank: int, world_size: int):
        monkeypatch.setattr("pixart_lab.data.datamodule.distributed_layout", lambda: (rank, world_size))
        dm = FeatureDataModule(feature_dir, batch_size=4, seed=1)
        dm.setup()
        return dm.train_dataloader(), dm.val_dataloader()

    def indices(loader):
        return [b["index"].tolist() for b in loader]

    (train, val), ranks = loaders(0, 1), [loaders(r, 2) for r in (0, 1)]
    rounds, epoch = len(train) // 2, indices(train)
    assert rounds >= 1 and [(len(t), len(v)) for t, v in ranks] == [(rounds, math.ceil(len(val) / 2))] * 2
    assert [indices(t) for t, _ in ranks] == [epoch[r : 2 * rounds : 2] for r in (0, 1)]
    assert {i for _, v in ranks for b in indices(v) for i in b} == {i for b in indices(val) for i in b}  # all validated
    with pytest.raises(ValueError, match=f"fewer than {len(train) + 1} full batches \\(one per DDP rank\\) of 4"):
        loaders(0, len(train) + 1)


def test_loader_resumes_mid_epoch_with_the_batches_that_come_next(feature_dir):
    def loader():
        dm = FeatureDataModule(feature_dir, batch_size=2, seed=5)
        dm.setup()
        return dm.train_dataloader()

    def indices(batches):
        return [b["index"].tolist() for b in batches]

    uninterrupted = loader()
    reference = indices(uninterrupted) + indices(uninterrupted)  # two epochs
    first = loader()
    batches = iter(first)
    seen = indices(next(batches) for _ in range(3))
    state = first.state_dict()
    assert state == {"epoch": 0, "batches": 3}
    resumed = loader()
    resumed.load_state_dict(state)
    assert seen + indices(resumed) + indices(resumed) == reference
    assert reference[: len(reference) // 2] != reference[len(reference) // 2 :]  # epochs differ


def test_a_split_without_one_full_batch_is_refused_with_the_bucket_sizes(feature_dir):
    dm = FeatureDataModule(feature_dir, train_split="aesthetic", val_split=None, batch_size=64)
    dm.setup()
    with pytest.raises(ValueError, match="no bucket holds a full batch of 64"):
        dm.train_dataloader()


def test_a_record_listed_twice_is_cached_once_and_counted(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path):
    listed = records(tiny_corpus, "train")[:6]
    report = SkipReport()
    stats = extract_split([*listed, listed[2]], SPECS["train"], tmp_path / "f", tiny_vae, tiny_text_encoder, report,
                          shard_size=4, progress=False)  # fmt: skip
    index = json.loads((tmp_path / "f" / "index.json").read_text())
    keys = [k for shard in index["shards"] for k in read_shard(tmp_path / "f" / shard["file"], shard["sha256"])[1]]
    assert keys == [r.key for r in listed] and stats["count"] == 6
    assert report.as_dict()["by_reason"] == {"listed more than once": 1}
