"""A full disk or a refused write of a checkpoint, a feature shard or a metrics file: a clear error
naming the file, and the previous file byte for byte as it was (atomic writes)."""

from __future__ import annotations

import errno
import json
import tempfile

from functools import partial

import lightning as L
import pytest
import torch
from tiny_models import tiny_denoiser

from pixart_lab.cli.entry import one_line
from pixart_lab.data.datamodule import FeatureDataModule
from pixart_lab.data.features import SplitSpec, extract_split
from pixart_lab.data.readers import PixArtInfoReader
from pixart_lab.data.records import SkipReport
from pixart_lab.training.checkpoints import AtomicCheckpointIO, StepCheckpoint
from pixart_lab.training.diffusion_module import DiffusionModule
from pixart_lab.utils.io import atomic_write_bytes, write_json


def extract_train_split(corpus, out, vae, text_encoder):
    records = PixArtInfoReader(corpus / "train" / "data_info.json", key_prefix="train/").records()
    return extract_split(records, SplitSpec("train", 64), out, vae, text_encoder, SkipReport(), shard_size=8, batch_size=4, progress=False)


def half_then_full_disk(real_write):
    """A writer that writes half its bytes, then fails as a full disk does."""

    def write(data, path, *args, **kwargs):
        real_write(data, path, *args, **kwargs)
        with open(path, "r+b") as f:
            f.truncate(max(1, f.seek(0, 2) // 2))
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_features, tiny_text_encoder, tmp_path, monkeypatch):
    run_dir = tmp_path / "ckpt"

    class FullDiskAtStep3(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.global_step + 1 == 3:
                self.previous = (run_dir / "last.ckpt").read_bytes()
                monkeypatch.setattr(torch, "save", half_then_full_disk(torch.save))

    watch = FullDiskAtStep3()
    trainer = L.Trainer(
        max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[watch, StepCheckpoint(dirpath=run_dir, every_n_train_steps=1, save_last=True, save_top_k=0)],
        plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    module = DiffusionModule(tiny_denoiser("dit", tiny_text_encoder), partial(torch.optim.AdamW, lr=1e-3), warmup_steps=1)
    with pytest.raises(OSError) as error:
        trainer.fit(module, datamodule=FeatureDataModule(tiny_features, val_split=None, batch_size=4))
    monkeypatch.undo()
    assert error.value.errno == errno.ENOSPC
    assert str(error.value) == (
        f"[Errno 28] cannot write {run_dir / 'last.ckpt'}: No space left on device; the previous last.ckpt is unchanged"
    )
    assert (run_dir / "last.ckpt").read_bytes() == watch.previous
    assert sorted(p.name for p in run_dir.iterdir()) == ["last.ckpt"]  # no half-written temporary left
    assert torch.load(run_dir / "last.ckpt", weights_only=False)["global_step"] == 2  # still a checkpoint to resume
    message, status = one_line(error.value)  # what the entry point prints
    assert status == 1 and message.endswith("No space left on device; the previous last.ckpt is unchanged")


def test_a_full_disk_during_feature_extraction_keeps_every_whole_shard(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path, monkeypatch):
    import pixart_lab.data.features as features

    out = tmp_path / "train"
    extract_train_split(tiny_corpus, out, tiny_vae, tiny_text_encoder)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "1p0-00001.safetensors").unlink()  # one shard to recompute, on a disk that is now full
    monkeypatch.setattr(features, "save_file", half_then_full_disk(features.save_file))
    with pytest.raises(OSError, match=r"cannot write .*1p0-00001\.safetensors: No space left on device; nothing was written"):
        extract_train_split(tiny_corpus, out, tiny_vae, tiny_text_encoder)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == {name: data for name, data in before.items() if name != "1p0-00001.safetensors"}

    monkeypatch.undo()  # space again: the re-run writes the missing shard and nothing else changes
    stats = extract_train_split(tiny_corpus, out, tiny_vae, tiny_text_encoder)
    assert stats["computed_images"] == 8 and {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_refused_metrics_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "metrics" / "stage2.json"
    write_json(target, {"steps": 700})
    previous = target.read_bytes()
    monkeypatch.setattr(tempfile, "mkstemp", lambda **kw: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied")))
    with pytest.raises(PermissionError, match=r"cannot write .*stage2\.json: Permission denied; the previous stage2\.json is unchanged"):
        write_json(target, {"steps": 1400})
    assert target.read_bytes() == previous and json.loads(previous) == {"steps": 700}


def test_a_refused_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    import os

    target = tmp_path / "grid.png"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(OSError) as error:
        atomic_write_bytes(target, b"new")
    assert error.value.errno == errno.EROFS and "grid.png: Read-only file system" in str(error.value)
    monkeypatch.undo()
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
