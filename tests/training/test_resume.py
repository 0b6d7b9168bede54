"""Exact resume from every step's checkpoint, and the rule that decides whether a checkpoint may be continued."""

from __future__ import annotations

import logging

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from test_diffusion_module import LossRecorder, make_data, make_module

from pixart_lab.training.checkpoints import AtomicCheckpointIO, StepCheckpoint
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.resume import RunFingerprint, WriteFingerprint, decide_resume
from pixart_lab.utils.errors import ResumeError

MAX_STEPS, VAL_EVERY = 7, 3  # DiT: 24 training images in batches of 8, epochs end at steps 3 and 6


def fit(tmp_path, module, features, ckpt_path=None, checkpoints=True, kind="dit"):
    losses = LossRecorder()
    history = MetricHistory(tmp_path / "loss.csv", keys=["train/loss", "val/loss", "val/ema_loss"], every_n_steps=1)
    callbacks = [losses, history]
    if checkpoints:
        callbacks.append(StepCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"))
    trainer = L.Trainer(
        max_steps=MAX_STEPS, val_check_interval=VAL_EVERY, check_val_every_n_epoch=None, limit_val_batches=1,
        logger=False, enable_checkpointing=checkpoints, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=tmp_path, plugins=[AtomicCheckpointIO()],
    )  # fmt: skip
    data = make_data(features, kind, batch_size=8 if kind == "dit" else 2)
    data.val_split = "heldout"
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return losses.losses, history.rows, trainer


# pixart_ms: multi-aspect buckets at 128 px and micro-conditions (minutes on 2 cores: slow)
@pytest.mark.parametrize("kind", ["dit", pytest.param("pixart_ms", marks=pytest.mark.slow)])
def test_resuming_from_any_step_gives_the_uninterrupted_run_bit_for_bit(kind, tiny_features, tiny_text_encoder, tmp_path):
    full = make_module(kind, tiny_text_encoder)
    losses, rows, trainer = fit(tmp_path, full, tiny_features, kind=kind)
    optimizer = trainer.optimizers[0].state_dict()
    assert sorted(losses) == list(range(1, MAX_STEPS + 1))
    assert [r["step"] for r in rows if "val_loss" in r] == [3, 6]

    for step in range(1, MAX_STEPS):
        module = make_module(kind, tiny_text_encoder)
        checkpoint = tmp_path / "ckpt" / f"step={step}.ckpt"
        resumed_losses, resumed_rows, resumed = fit(tmp_path / f"from{step}", module, tiny_features, checkpoint, False, kind)
        assert resumed_losses == {s: losses[s] for s in range(step + 1, MAX_STEPS + 1)}, f"resumed from step {step}"
        assert resumed_rows == rows, f"history resumed from step {step}"  # validation rows of steps 3 and 6 included
        for name, tensor in full.state_dict().items():  # weights, EMA (and its update count), counters
            assert torch.equal(module.state_dict()[name], tensor), f"{name} resumed from step {step}"
        resumed_optimizer = resumed.optimizers[0].state_dict()
        for i, state in optimizer["state"].items():
            for key, value in state.items():
                assert torch.equal(resumed_optimizer["state"][i][key], value), f"optimiser {key} resumed from step {step}"
        assert resumed.lr_scheduler_configs[0].scheduler.state_dict() == trainer.lr_scheduler_configs[0].scheduler.state_dict()


# ---- the rule -------------------------------------------------------------------------------------
CONFIG = {"seed": 0, "module": {"lr": 0.002, "nan_policy": "stop"}, "stage": {"max_steps": 10}}


def fingerprint(features="f" * 64, **changes):
    cfg = OmegaConf.merge(CONFIG, changes)
    return RunFingerprint.of(cfg, ["seed", "module"], ignore=["module.nan_policy"], features=features)


def checkpoint_at(tmp_path, step, fp):
    path = tmp_path / f"step{step}.ckpt"
    payload = {"global_step": step}
    WriteFingerprint(fp).on_save_checkpoint(None, None, payload)
    torch.save(payload, path)
    return str(path)


def test_an_unfinished_run_continues_only_with_its_own_configuration(tmp_path):
    path = checkpoint_at(tmp_path, 4, fingerprint())
    assert decide_resume(path, fingerprint(), max_steps=10, explicit=False).path == path
    # max_steps, the NaN policy and other keys outside resume_check may change
    assert decide_resume(path, fingerprint(stage={"max_steps": 20}, module={"nan_policy": "skip"}), 20, False).path == path
    with pytest.raises(ResumeError, match=r"step4.ckpt \(step 4 of 10\) was written by a different run: module.lr: 0.002 -> 0.001\. "):
        decide_resume(path, fingerprint(module={"lr": 0.001}), 10, explicit=False)
    with pytest.raises(ResumeError, match=r"features \(input hash\): 'ffffffffffff' -> 'eeeeeeeeeeee'"):
        decide_resume(path, fingerprint(features="e" * 64), 10, explicit=False)


def test_a_finished_run_is_reused_only_by_the_identical_run(tmp_path, caplog):
    path = checkpoint_at(tmp_path, 10, fingerprint())
    same = decide_resume(path, fingerprint(), max_steps=10, explicit=False)
    assert (same.path, same.finished) == (path, True)  # nothing to train: only the outputs are written
    with caplog.at_level(logging.WARNING):
        assert decide_resume(path, fingerprint(module={"lr": 0.001}), 10, explicit=False).path is None
    assert "is a finished run (step 10) of another configuration (module.lr: 0.002 -> 0.001): starting over" in caplog.text
    # extending a finished run with more steps continues it
    assert decide_resume(path, fingerprint(), max_steps=30, explicit=False) == type(same)(path, False)
    # a checkpoint named by the user is never silently replaced
    with pytest.raises(ResumeError, match="module.lr"):
        decide_resume(path, fingerprint(module={"lr": 0.001}), 10, explicit=True)


def test_other_code_starts_a_finished_run_over_but_continues_an_unfinished_one(tmp_path, caplog):
    old = RunFingerprint(fingerprint().config, fingerprint().inputs, code="0" * 64)
    finished, unfinished = checkpoint_at(tmp_path, 10, old), checkpoint_at(tmp_path, 5, old)
    assert decide_resume(finished, fingerprint(), 10, explicit=False).path is None
    with caplog.at_level(logging.WARNING):
        assert decide_resume(unfinished, fingerprint(), 10, explicit=False).path == unfinished
    assert "was written by other code (source hash 000000000000); continuing it" in caplog.text


def test_an_unreadable_checkpoint_is_named(tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"\x80\x02 torn")
    with pytest.raises(ResumeError, match=r"last.ckpt: unreadable checkpoint"):
        decide_resume(str(tmp_path / "last.ckpt"), fingerprint(), 10, explicit=False)
