"""Per-block adaLN (the adaLN-single ablation): same function at initialisation, more parameters, own MLPs."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import PixArtTransformer2DModel

from pixart_lab.models.per_block_adaln import modulation_parameters, per_block_adaln

CONFIG = dict(num_attention_heads=2, attention_head_dim=8, num_layers=3, in_channels=4, out_channels=8, sample_size=8,
              patch_size=2, cross_attention_dim=16, caption_channels=12, norm_eps=1e-6, interpolation_scale=1,
              use_additional_conditions=False)  # fmt: skip


def inputs(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(2, 4, 8, 8, generator=g),
        encoder_hidden_states=torch.randn(2, 5, 12, generator=g),
        encoder_attention_mask=torch.ones(2, 5),
        timestep=torch.tensor([10, 700]),
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
    )


@pytest.fixture
def single() -> PixArtTransformer2DModel:
    torch.manual_seed(0)
    model = PixArtTransformer2DModel(**CONFIG)
    for block in model.transformer_blocks:  # cross-attention active, so every path is compared
        torch.nn.init.normal_(block.attn2.to_out[0].weight, std=0.1)
    return model


@pytest.mark.parametrize("checkpointing", [False, True])
def test_per_block_starts_as_the_same_function(single, checkpointing):
    per_block = per_block_adaln(copy.deepcopy(single))
    if checkpointing:
        per_block.enable_gradient_checkpointing()
    torch.testing.assert_close(per_block(**inputs()).sample, single(**inputs()).sample, atol=1e-6, rtol=0)


def test_per_block_has_an_mlp_per_block_and_they_train_apart(single):
    per_block = per_block_adaln(copy.deepcopy(single))
    d = 16
    mlp = 6 * d * d + 6 * d
    extra = sum(p.numel() for p in per_block.parameters()) - sum(p.numel() for p in single.parameters())
    assert extra == (CONFIG["num_layers"] - 1) * mlp
    assert modulation_parameters(single) == mlp + 3 * 6 * d and modulation_parameters(per_block) == 3 * mlp + 3 * 6 * d

    per_block(**inputs()).sample.square().mean().backward()
    grads = [b.modulation.weight.grad for b in per_block.transformer_blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not torch.equal(grads[0], grads[1])  # each block's MLP learns its own modulation


def test_converting_twice_is_refused(single):
    with pytest.raises(ValueError, match="converted twice"):
        per_block_adaln(per_block_adaln(single))


def test_export_keeps_every_blocks_own_modulation(single, tmp_path):
    from safetensors.torch import load_file

    from pixart_lab.training.checkpoints import export_network

    per_block = per_block_adaln(copy.deepcopy(single))
    for i, block in enumerate(per_block.transformer_blocks):
        torch.nn.init.constant_(block.modulation.bias, float(i))  # trained apart
    saved = load_file(export_network(per_block, tmp_path) / "diffusion_pytorch_model.safetensors")
    assert not any(k.startswith("adaln_single.linear") for k in saved)
    for i in range(CONFIG["num_layers"]):
        assert torch.equal(saved[f"transformer_blocks.{i}.modulation.bias"], torch.full((6 * 16,), float(i)))
