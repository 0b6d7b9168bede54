"""DreamBooth's objective and fine-tune strategies: instance + lambda * prior loss; LoRA leaves the base alone."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from tiny_models import tiny_denoiser
from torch.utils.data import DataLoader

from pixart_lab.models.lora import WEIGHT_NAME, load_lora, lora_layers
from pixart_lab.training.checkpoints import WEIGHTS_FILE
from pixart_lab.training.dreambooth import FullFineTune, LoraFineTune, PriorPreservationModule, trainable_parameters
from pixart_lab.utils.errors import ConfigError


def make_module(text_encoder, strategy=None, prior_loss_weight=1.0, prior_target="noise", reference=None):
    denoiser = tiny_denoiser("pixart", text_encoder)
    if strategy is not None:
        denoiser.transformer = strategy.prepare(denoiser.transformer)
    optimizer = partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.0)
    return PriorPreservationModule(denoiser, optimizer, prior_loss_weight=prior_loss_weight, prior_target=prior_target,
                                   reference=reference, warmup_steps=1, ema_decay=0.5, base_batch_size=4, condition_dropout=0.0)  # fmt: skip


def fake_batch(text_encoder, n_instance=2, n_class=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb, mask = text_encoder.encode(["a large sks circle"] * n_instance + ["a large circle"] * n_class, pad_to_max_length=False)
    n = n_instance + n_class
    return {
        "latent_mean": torch.randn(n, 4, 16, 16, generator=g), "latent_std": torch.zeros(n, 4, 16, 16),
        "caption_emb": emb, "caption_mask": mask, "instance": torch.tensor([True] * n_instance + [False] * n_class),
    }  # fmt: skip


class Logged(PriorPreservationModule):
    """Captures what training_step logs (no trainer attached)."""

    def log_dict(self, values, **kwargs):
        self.logged = {k: float(v.detach()) for k, v in values.items()}


@pytest.mark.parametrize("weight", [0.0, 1.0, 0.5])
def test_loss_is_instance_loss_plus_lambda_times_prior_loss(tiny_text_encoder, weight):
    module = make_module(tiny_text_encoder, prior_loss_weight=weight)
    module.__class__ = Logged
    batch = fake_batch(tiny_text_encoder)
    parts = module.per_sample_losses(module.denoiser, batch, module._generator(0), drop_conditions=True)["loss"]
    loss = module.training_step(batch, 0)
    torch.testing.assert_close(loss, parts[:2].mean() + weight * parts[2:].mean())
    assert module.logged["train/instance_loss"] == pytest.approx(float(parts[:2].mean()))
    assert module.logged["train/prior_loss"] == pytest.approx(float(parts[2:].mean()))
    # The class rows reach the gradient only through lambda.
    changed = fake_batch(tiny_text_encoder)
    changed["latent_mean"][2:] += 3.0
    moved = float(module.training_step(changed, 0)) != pytest.approx(float(loss))
    assert moved == (weight > 0)


def test_base_prior_target_fits_the_frozen_base_prediction_on_class_rows(tiny_text_encoder):
    module = make_module(tiny_text_encoder, prior_loss_weight=2.0, prior_target="base", reference=tiny_denoiser("pixart", tiny_text_encoder))
    module.reference.load_state_dict(module.denoiser.state_dict())  # the base, before fine-tuning
    module.__class__ = Logged
    batch = fake_batch(tiny_text_encoder)
    parts = module.per_sample_losses(module.denoiser, batch, module._generator(0), drop_conditions=True, reference=module.reference)
    assert parts["distill"].tolist() == [0.0] * 4  # equal networks, same inputs
    torch.testing.assert_close(module.training_step(batch, 0), parts["loss"][:2].mean())
    with torch.no_grad():
        module.denoiser.transformer.proj_out.bias += 0.1  # the fine-tuned model drifts
    parts = module.per_sample_losses(module.denoiser, batch, module._generator(0), drop_conditions=True, reference=module.reference)
    assert parts["distill"].min() > 1e-3
    loss = module.training_step(batch, 0)
    torch.testing.assert_close(loss, parts["loss"][:2].mean() + 2.0 * parts["distill"][2:].mean())
    assert module.logged["train/prior_loss"] == pytest.approx(float(parts["distill"][2:].mean()))
    loss.backward()
    assert all(p.grad is None for p in module.reference.parameters())  # frozen, out of the graph
    assert not module.train().reference.training


def test_prior_target_is_checked_by_name(tiny_text_encoder):
    with pytest.raises(ConfigError, match=r"module.prior_target='model': expected one of noise, base"):
        make_module(tiny_text_encoder, prior_target="model")
    with pytest.raises(ConfigError, match="prior_target=base needs the frozen base model as reference"):
        make_module(tiny_text_encoder, prior_target="base")


def test_lora_fine_tune_trains_adapters_only_and_saves_what_it_trained(tiny_features, tiny_text_encoder, tmp_path):
    from pixart_lab.data.datamodule import FeatureDataModule

    strategy = LoraFineTune(rank=2, alpha=4)
    module = make_module(tiny_text_encoder, strategy)
    base = {k: v.clone() for k, v in module.denoiser.state_dict().items() if "lora_" not in k}
    assert trainable_parameters(module.denoiser) == sum(p.numel() for n, p in module.denoiser.named_parameters() if "lora_" in n)

    class Tagged(FeatureDataModule):  # the tiny corpus as subject rows, so the class term is empty
        def train_dataloader(self):
            batches = [{**b, "instance": torch.ones(len(b["latent_mean"]), dtype=torch.bool)} for b in super().train_dataloader()]
            return DataLoader(batches, batch_size=None)

    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=Tagged(tiny_features, val_split=None, batch_size=4))
    after = module.denoiser.state_dict()
    assert all(torch.equal(after[k], v) for k, v in base.items())  # the base model is untouched
    assert any(not torch.equal(l.lora_B["default"].weight, torch.zeros_like(l.lora_B["default"].weight))
               for l in lora_layers(module.denoiser.transformer))  # fmt: skip

    path = strategy.save(module.ema.module.transformer, tmp_path)
    assert path == tmp_path / "lora" / WEIGHT_NAME
    fresh = load_lora(tiny_denoiser("pixart", tiny_text_encoder).transformer, path.parent)
    ema = module.ema.module.transformer.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in fresh.state_dict().items())


def test_full_fine_tune_trains_a_copy_and_saves_a_diffusers_folder(tiny_text_encoder, tmp_path):
    denoiser = tiny_denoiser("pixart", tiny_text_encoder)
    original = denoiser.transformer.requires_grad_(False)
    copy = FullFineTune().prepare(original)
    assert copy is not original and all(p.requires_grad for p in copy.parameters())
    assert not any(p.requires_grad for p in original.parameters())
    assert FullFineTune().save(copy, tmp_path) == tmp_path / "transformer" / WEIGHTS_FILE
