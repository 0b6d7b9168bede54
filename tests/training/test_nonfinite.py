"""NaN / inf in a training step's loss or gradients: stop naming the step and samples with the last
checkpoint intact, or skip the update (counted), as ``module.nan_policy`` says."""

from __future__ import annotations

import logging
import math

import lightning as L
import pytest
import torch
from test_diffusion_module import make_data, make_module

from pixart_lab.training.checkpoints import AtomicCheckpointIO, StepCheckpoint
from pixart_lab.utils.errors import ConfigError, NonFiniteError

MAX_STEPS = 6  # 24 training images in batches of 8: the poisoned sample comes once per epoch of 3 steps
POISONED = 5  # training-set index whose cached latent becomes NaN


class Watch(L.Callback):
    """Keeps ``last.ckpt``'s bytes and the weights at the start of every step."""

    def __init__(self, run_dir):
        self.run_dir, self.last_ckpt, self.weights = run_dir, {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        step = trainer.global_step + 1
        last = self.run_dir / "last.ckpt"
        self.last_ckpt[step] = last.read_bytes() if last.is_file() else None
        self.weights[step] = {k: v.clone() for k, v in module.denoiser.state_dict().items()}


class InfGradient(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_after_backward(self, trainer, module):
        if trainer.global_step + 1 == self.step:
            next(module.denoiser.parameters()).grad[0] = math.inf


def run(tiny_features, tiny_text_encoder, tmp_path, policy, poison=True, callbacks=()):
    module = make_module("dit", tiny_text_encoder, nan_policy=policy)
    data = make_data(tiny_features, "dit", batch_size=8)
    data.setup()
    if poison:
        shard, row = data.train_set.items[POISONED]
        data.train_set.shards[shard]["latent_mean"][row, 0, 0, 0] = math.nan
    watch = Watch(tmp_path / "ckpt")
    trainer = L.Trainer(
        max_steps=MAX_STEPS, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        callbacks=[watch, StepCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0),
                   *callbacks],
        plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    return module, data, watch, trainer


def poisoned_steps(data) -> list[int]:
    """Steps (1-based) whose batch holds the poisoned sample, in the order the run draws them."""
    loader = make_data(data.features_dir, "dit", batch_size=8)
    loader.setup()
    epochs = loader.train_dataloader()
    batches = [b["index"].tolist() for _ in range(2) for b in epochs]
    return [step for step, indices in enumerate(batches[:MAX_STEPS], start=1) if POISONED in indices]


def test_a_nan_loss_stops_the_run_naming_step_and_sample_with_the_last_checkpoint_intact(tiny_features, tiny_text_encoder, tmp_path):
    module, data, watch, trainer = run(tiny_features, tiny_text_encoder, tmp_path, "stop")
    step = poisoned_steps(data)[0]
    key = data.train_set.keys[POISONED]
    with pytest.raises(NonFiniteError) as error:
        trainer.fit(module, datamodule=data)
    message = str(error.value)
    assert message.startswith(f"step {step}: loss is nan (samples: {key}); stopped before the update (module.nan_policy=stop)")
    assert "\n" not in message and f"last checkpoint: {tmp_path / 'ckpt' / 'last.ckpt'}" in message
    assert (tmp_path / "ckpt" / "last.ckpt").read_bytes() == watch.last_ckpt[step]  # the one of step - 1, untouched
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == step - 1
    assert all(torch.isfinite(v).all() for v in module.denoiser.state_dict().values() if v.is_floating_point())


def test_skip_drops_exactly_the_poisoned_updates_and_counts_them(tiny_features, tiny_text_encoder, tmp_path, caplog):
    module, data, watch, trainer = run(tiny_features, tiny_text_encoder, tmp_path, "skip")
    steps, key = poisoned_steps(data), data.train_set.keys[POISONED]
    assert len(steps) == 2  # once per epoch
    with caplog.at_level(logging.WARNING):
        trainer.fit(module, datamodule=data)
    assert trainer.global_step == MAX_STEPS and int(module.skipped_steps) == len(steps)
    assert int(module.ema.updates) == MAX_STEPS - len(steps)
    for step in steps:
        assert f"step {step}: loss is nan (samples: {key}); optimiser step skipped" in caplog.text
    after = {**watch.weights, MAX_STEPS + 1: module.denoiser.state_dict()}
    for step in range(1, MAX_STEPS + 1):
        unchanged = all(torch.equal(after[step][k], after[step + 1][k]) for k in after[step])
        assert unchanged == (step in steps), f"step {step}"
    adam_steps = {int(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()}
    assert adam_steps == {MAX_STEPS - len(steps)}  # Adam's moments did not see the skipped steps either
    assert float(trainer.callback_metrics["train/skipped_steps"]) == len(steps)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_inf_gradients_with_a_finite_loss_are_caught_too(policy, tiny_features, tiny_text_encoder, tmp_path):
    module, data, watch, trainer = run(tiny_features, tiny_text_encoder, tmp_path, policy, poison=False, callbacks=[InfGradient(2)])
    if policy == "stop":
        with pytest.raises(NonFiniteError, match=r"^step 2: gradient norm is inf \(samples: train/images/\d{6}\.png, "):
            trainer.fit(module, datamodule=data)
        assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["global_step"] == 1
    else:
        trainer.fit(module, datamodule=data)
        assert int(module.skipped_steps) == 1 and all(torch.equal(v, watch.weights[3][k]) for k, v in watch.weights[2].items())


def test_an_unknown_policy_is_a_config_error(tiny_text_encoder):
    with pytest.raises(ConfigError, match=r"module.nan_policy='ignore': expected one of stop, skip"):
        make_module("dit", tiny_text_encoder, nan_policy="ignore")
