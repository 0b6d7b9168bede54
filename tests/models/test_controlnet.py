"""ControlNet-Transformer: zero-initialised it is the base model exactly; it trains while the base stays frozen."""

from functools import partial

import lightning as L
import pytest
import torch
from tiny_models import tiny_denoiser

from pixart_lab.data.control_features import ControlFeatureDataModule
from pixart_lab.models.controlnet import EdgeControlledPixArt, PixArtControlNet, controlled_forward
from pixart_lab.training.diffusion_module import DiffusionModule


def randomised(transformer):
    """Every base weight random and non-zero (diffusers zero-initialises none here, but make sure)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in transformer.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return transformer.eval()


def random_inputs(transformer, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = transformer.config.sample_size if transformer.config.sample_size != 128 else 12
    x = torch.randn(n, 4, size, size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    caption = torch.randn(n, 7, transformer.config.caption_channels, generator=g)
    mask = torch.ones(n, 7, dtype=torch.long)
    mask[0, 3:] = 0  # a padded caption
    control = torch.randn(n, 4, size, size, generator=g)
    added = {"resolution": torch.tensor([[48.0, 48.0]] * n), "aspect_ratio": torch.ones(n, 1)}
    return x, t, caption, mask, control, added if transformer.use_additional_conditions else None


@pytest.mark.parametrize("kind", ["pixart", "pixart_ms"])
def test_zero_initialised_controlnet_output_equals_the_base_output_exactly(kind, tiny_text_encoder):
    base = randomised(tiny_denoiser(kind, tiny_text_encoder).transformer)
    controlnet = PixArtControlNet.from_transformer(base, num_layers=1)
    for seed in range(3):
        x, t, caption, mask, control, added = random_inputs(base, seed=seed)
        with torch.no_grad():
            expected = base(x, encoder_hidden_states=caption, timestep=t, encoder_attention_mask=mask,
                            added_cond_kwargs=added).sample  # fmt: skip
            got = controlled_forward(base, controlnet, x, t, caption, mask, control, added)
        assert torch.equal(got, expected)
    # ... and the same ControlNet with non-zero projections does change it: the test can fail.
    with torch.no_grad():
        controlnet.after_proj[0].weight.normal_(0, 0.1)
        controlnet.before_proj.weight.normal_(0, 0.1)
        changed = controlled_forward(base, controlnet, x, t, caption, mask, control, added)
    assert (changed - expected).abs().max() > 1e-2


def test_copies_start_as_the_first_base_blocks_with_zero_projections(tiny_text_encoder):
    base = randomised(tiny_denoiser("pixart", tiny_text_encoder).transformer)
    controlnet = PixArtControlNet.from_transformer(base, num_layers=1)
    copy, block = controlnet.blocks[0].state_dict(), base.transformer_blocks[0].state_dict()
    assert copy.keys() == block.keys() and all(torch.equal(copy[k], block[k]) for k in copy)
    assert controlnet.blocks[0].attn1.to_q.weight.data_ptr() != base.transformer_blocks[0].attn1.to_q.weight.data_ptr()
    projections = [controlnet.before_proj, *controlnet.after_proj]
    assert len(projections) == 2 and all(p.weight.abs().sum() == 0 and p.bias.abs().sum() == 0 for p in projections)


def test_the_number_of_copies_must_leave_a_base_block_to_feed(tiny_text_encoder):
    base = tiny_denoiser("pixart", tiny_text_encoder).transformer  # 2 blocks: copies feed block 1 only
    with pytest.raises(ValueError, match=r"N must lie in \[1, 1\] for a 2-block base"):
        PixArtControlNet.from_transformer(base, num_layers=2)


def test_gradient_checkpointing_gives_the_same_output_and_gradients(tiny_text_encoder):
    base = randomised(tiny_denoiser("pixart", tiny_text_encoder).transformer)
    controlnet = PixArtControlNet.from_transformer(base, num_layers=1)
    with torch.no_grad():
        controlnet.after_proj[0].weight.normal_(0, 0.1)
        controlnet.before_proj.weight.normal_(0, 0.1)
    x, t, caption, mask, control, _ = random_inputs(base)
    grads = []
    for checkpointed in (False, True):
        base.gradient_checkpointing = checkpointed
        controlnet.zero_grad()
        out = controlled_forward(base, controlnet, x, t, caption, mask, control)
        out.square().mean().backward()
        grads.append((out.detach(), controlnet.before_proj.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-6, rtol=0)
    assert grads[0][1].abs().sum() > 0


def test_saved_controlnet_reloads_with_identical_output(tiny_text_encoder, tmp_path):
    base = randomised(tiny_denoiser("pixart", tiny_text_encoder).transformer)
    controlnet = PixArtControlNet.from_transformer(base, num_layers=1)
    with torch.no_grad():
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    controlnet.save_pretrained(tmp_path / "controlnet")
    reloaded = PixArtControlNet.from_pretrained(tmp_path / "controlnet")
    x, t, caption, mask, control, _ = random_inputs(base)
    with torch.no_grad():
        assert torch.equal(controlled_forward(base, reloaded, x, t, caption, mask, control),
                           controlled_forward(base, controlnet, x, t, caption, mask, control))  # fmt: skip
    assert reloaded.config.num_layers == 1 and reloaded.config.transformer_config["num_layers"] == 2


class StateRecorder(L.Callback):
    def __init__(self):
        self.after = {}

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.after[trainer.global_step] = {k: v.clone() for k, v in module.denoiser.controlnet.state_dict().items()}


def test_training_moves_only_the_controlnet_and_its_ema(tiny_features, tiny_control_features, tiny_text_encoder, tmp_path):
    wrapped = tiny_denoiser("pixart", tiny_text_encoder)
    base = randomised(wrapped.transformer)
    denoiser = EdgeControlledPixArt(base, PixArtControlNet.from_transformer(base, 1), wrapped.null_caption_emb, wrapped.null_caption_mask)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    optimizer = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.03, eps=1e-10)
    module = DiffusionModule(denoiser, optimizer, warmup_steps=1, ema_decay=0.9)
    data = ControlFeatureDataModule(tiny_features, tiny_control_features, train_split="train", val_split=None, batch_size=4)
    recorder = StateRecorder()
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[recorder], default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    trainer.fit(module, datamodule=data)

    optimised = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimised == {id(p) for p in denoiser.controlnet.parameters()}
    assert all(torch.equal(v, base_before[k]) for k, v in base.state_dict().items())
    assert not base.training and all(not p.requires_grad for p in base.parameters())
    # Step 1: only after_proj can move (the copies' gradients pass through it, zero at init) ...
    step1 = recorder.after[1]
    assert step1["after_proj.0.weight"].abs().sum() > 0 and step1["before_proj.weight"].abs().sum() == 0
    # ... and already the controlled output differs from the base's; from step 2 the whole chain learns.
    batch = next(iter(data.train_dataloader()))
    x, t = batch["latent_mean"], torch.full((4,), 500)
    with torch.no_grad():
        assert not torch.equal(denoiser(x, t, batch), wrapped.forward(x, t, batch))
    assert denoiser.controlnet.before_proj.weight.abs().sum() > 0
    ema = module.ema.module
    assert all(torch.equal(v, base_before[k]) for k, v in ema.transformer.state_dict().items())
    assert not torch.equal(ema.controlnet.after_proj[0].weight, torch.zeros_like(ema.controlnet.after_proj[0].weight))


def test_a_batch_without_control_is_refused_by_name(tiny_text_encoder):
    wrapped = tiny_denoiser("pixart", tiny_text_encoder)
    denoiser = EdgeControlledPixArt(wrapped.transformer, PixArtControlNet.from_transformer(wrapped.transformer, 1),
                                    wrapped.null_caption_emb, wrapped.null_caption_mask)  # fmt: skip
    batch = {"caption_emb": torch.randn(1, 3, tiny_text_encoder.hidden_size), "caption_mask": torch.ones(1, 3)}
    with pytest.raises(KeyError, match="needs 'control'"):
        denoiser(torch.randn(1, 4, 16, 16), torch.tensor([1]), batch)
