import math
from functools import partial

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from tiny_models import tiny_denoiser

from pixart_lab.data.datamodule import FeatureDataModule, sample_latents
from pixart_lab.diffusion.timesteps import min_snr_weights, sample_timesteps
from pixart_lab.training.diffusion_module import DiffusionModule, sqrt_scaled_lr
from pixart_lab.training.ema import EMA
from pixart_lab.utils.errors import ConfigError

SPLIT = {"dit": "train", "pixart": "train", "pixart_ms": "aesthetic"}


def make_module(kind, text_encoder, **kwargs):
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.03, eps=1e-10)
    return DiffusionModule(tiny_denoiser(kind, text_encoder), optimizer, warmup_steps=1, ema_decay=0.9, **kwargs)


def make_data(features, kind, batch_size=None):
    batch_size = batch_size or (2 if kind == "pixart_ms" else 4)  # 10 aesthetic images over 5 buckets
    return FeatureDataModule(features, train_split=SPLIT[kind], val_split=None, batch_size=batch_size, seed=0)


def trainer(tmp_path, max_steps, callbacks=(), checkpointing=False):
    return L.Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=checkpointing, enable_progress_bar=False,
        enable_model_summary=False, callbacks=list(callbacks), default_root_dir=tmp_path, limit_val_batches=0,
    )  # fmt: skip


class LossRecorder(L.Callback):
    def __init__(self):
        self.losses = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses[trainer.global_step] = float(outputs["loss"])


@pytest.mark.parametrize("kind", ["dit", "pixart", "pixart_ms"])
def test_two_training_steps_update_the_denoiser_and_its_ema(kind, tiny_features, tiny_text_encoder, tmp_path):
    module = make_module(kind, tiny_text_encoder)
    initial = {k: v.clone() for k, v in module.denoiser.state_dict().items()}
    run = trainer(tmp_path, max_steps=2)
    run.fit(module, datamodule=make_data(tiny_features, kind))

    assert run.global_step == 2 and int(module.ema.updates) == 2
    weights = module.denoiser.state_dict()
    changed = [k for k, v in weights.items() if not torch.equal(v, initial[k])]
    assert "transformer.proj_out.weight" in changed or "transformer.proj_out_2.weight" in changed
    assert "transformer.transformer_blocks.0.attn1.to_q.weight" in changed
    ema = module.ema.module.state_dict()
    key = "transformer.transformer_blocks.0.attn1.to_q.weight"
    assert not torch.equal(ema[key], initial[key]) and not torch.equal(ema[key], weights[key])
    logged = run.logged_metrics
    for name in ("train/loss", "train/mse", "train/vlb", "train/grad_norm"):
        assert math.isfinite(float(logged[name])), name
    # lambda_vlb * T = 0.001 * 1000 = 1
    assert float(logged["train/loss"]) == pytest.approx(float(logged["train/mse"] + logged["train/vlb"]), abs=1e-5)
    assert 0.1 < float(logged["train/mse"]) < 10


def test_learning_rate_is_sqrt_scaled_by_the_effective_batch(tiny_features, tiny_text_encoder, tmp_path):
    module = make_module("dit", tiny_text_encoder, base_batch_size=256)
    run = trainer(tmp_path, max_steps=1)
    run.fit(module, datamodule=make_data(tiny_features, "dit", batch_size=4))
    expected = 1e-3 * math.sqrt(4 / 256)
    assert sqrt_scaled_lr(1e-3, 4, 256) == pytest.approx(expected)
    assert run.optimizers[0].param_groups[0]["initial_lr"] == pytest.approx(expected)


def test_resuming_from_a_mid_stage_checkpoint_continues_the_same_loss_sequence(tiny_features, tiny_text_encoder, tmp_path):
    full = LossRecorder()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer(tmp_path, 5, [full, checkpoints], checkpointing=True).fit(
        make_module("pixart", tiny_text_encoder), datamodule=make_data(tiny_features, "pixart")
    )
    assert sorted(full.losses) == [1, 2, 3, 4, 5] and len(set(full.losses.values())) == 5

    resumed = LossRecorder()
    fresh = make_module("pixart", tiny_text_encoder, seed=0)
    trainer(tmp_path, 5, [resumed], checkpointing=False).fit(
        fresh, datamodule=make_data(tiny_features, "pixart"), ckpt_path=tmp_path / "ckpt" / "step=2.ckpt"
    )
    assert resumed.losses == {step: full.losses[step] for step in (3, 4, 5)}


def test_ema_is_the_exponential_average_of_the_weights():
    model = torch.nn.Linear(3, 2)
    w0 = model.weight.detach().clone()
    ema = EMA(model, decay=0.75, warmup=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.module.weight, 0.75 * w0 + 0.25 * (w0 + 1.0))
    warm = EMA(model, decay=0.9999, warmup=True)
    assert warm.current_decay() == pytest.approx(1 / 10)  # (1 + 0) / (10 + 0): early updates follow the weights


@pytest.mark.parametrize("kind", ["dit", "pixart"])
def test_gradient_checkpointing_gives_the_same_gradients(kind, tiny_features, tiny_text_encoder):
    data = make_data(tiny_features, kind)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    grads = []
    for checkpointing in (False, True):
        module = make_module(kind, tiny_text_encoder, gradient_checkpointing=checkpointing).train()
        losses = module.diffusion_losses(module.denoiser, batch, torch.Generator().manual_seed(3), drop_conditions=True)
        losses["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in module.denoiser.parameters() if p.grad is not None]))
    assert module.denoiser.transformer.gradient_checkpointing
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_bf16_autocast_trains_a_step(tiny_features, tiny_text_encoder, tmp_path):
    module = make_module("pixart", tiny_text_encoder)
    run = L.Trainer(max_steps=1, precision="bf16-mixed", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    run.fit(module, datamodule=make_data(tiny_features, "pixart"))
    assert run.global_step == 1 and math.isfinite(float(run.logged_metrics["train/loss"]))
    assert next(module.denoiser.parameters()).dtype == torch.float32  # mixed: weights stay float32


def test_min_snr_and_logit_normal_change_the_training_loss_not_validation(tiny_features, tiny_text_encoder):
    module = make_module("pixart", tiny_text_encoder, timestep_sampling="logit_normal", min_snr_gamma=5.0)
    data = make_data(tiny_features, "pixart")
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    generator = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    with torch.no_grad():
        trained = module.per_sample_losses(module.denoiser, batch, generator(), drop_conditions=False, training=True)
        validated = module.per_sample_losses(module.denoiser, batch, generator(), drop_conditions=False)
    # The training draw: the posterior sample comes first, then the logit-normal timesteps.
    replay = generator()
    sample_latents(batch, replay)
    t = sample_timesteps("logit_normal", len(batch["index"]), 1000, replay, "cpu")
    weights = min_snr_weights(module.schedule, t, 5.0)
    torch.testing.assert_close(trained["loss"], weights * trained["mse"] + trained["vlb"])
    torch.testing.assert_close(validated["loss"], validated["mse"] + validated["vlb"])  # uniform, unweighted
    assert not torch.allclose(trained["mse"], validated["mse"])  # other timesteps


def test_unknown_timestep_sampling_is_refused(tiny_text_encoder):
    with pytest.raises(ConfigError, match="module.timestep_sampling='sigmoid'"):
        make_module("pixart", tiny_text_encoder, timestep_sampling="sigmoid")
