"""Official PixArt-alpha checkpoints: a tiny model in the original key layout, and the XL/2 shapes on meta."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import PixArtTransformer2DModel

from pixart_lab.models.official_checkpoint import (
    CheckpointLayoutError,
    config_from_original,
    diffusers_to_original,
    load_original_checkpoint,
    original_to_diffusers,
    read_original_checkpoint,
    write_original_checkpoint,
)
from pixart_lab.utils.hub import MissingWeightsError

from original_layout import CAPTION, CHANNELS, DEPTH, GRID, HEADS, PATCH, WIDTH, original_shapes, tiny_original

def original_forward(state: dict, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, hw=None, ar=None) -> torch.Tensor:
    """The original network's forward pass (PixArt / PixArtMS, every caption token valid), written from
    the original code's definition: adaLN-single modulation t2i_modulate(x) = x (1 + scale) + shift."""

    def linear(h, name):
        return F.linear(h, state[f"{name}.weight"], state[f"{name}.bias"])

    def frequencies(values):  # TimestepEmbedder.timestep_embedding, 256 channels: [cos, sin]
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        args = values[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def mlp(values, name):
        return linear(F.silu(linear(frequencies(values), f"{name}.mlp.0")), f"{name}.mlp.2")

    def attention(q, k, v):  # [B, N, width] each -> multi-head softmax attention
        b, n, _ = q.shape
        split = lambda z: z.reshape(b, z.shape[1], HEADS, -1).transpose(1, 2)  # noqa: E731
        return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, WIDTH)

    def norm(h):
        return F.layer_norm(h, (WIDTH,), eps=1e-6)

    b = x.shape[0]
    h = F.conv2d(x, state["x_embedder.proj.weight"], state["x_embedder.proj.bias"], stride=PATCH)
    h = h.flatten(2).transpose(1, 2) + state["pos_embed"]
    temb = mlp(t, "t_embedder")
    if hw is not None:  # PixArtMS: SizeEmbedder on (h, w) and on the aspect ratio, concatenated
        size = mlp(hw.flatten(), "csize_embedder").reshape(b, -1)
        temb = temb + torch.cat([size, mlp(ar.flatten(), "ar_embedder").reshape(b, -1)], dim=1)
    t0 = linear(F.silu(temb), "t_block.1")
    cap = linear(F.gelu(linear(y, "y_embedder.y_proj.fc1"), approximate="tanh"), "y_embedder.y_proj.fc2")
    for i in range(DEPTH):
        p = f"blocks.{i}"
        shift1, scale1, gate1, shift2, scale2, gate2 = (state[f"{p}.scale_shift_table"][None] + t0.reshape(b, 6, -1)).chunk(6, 1)
        q, k, v = linear(norm(h) * (1 + scale1) + shift1, f"{p}.attn.qkv").chunk(3, dim=-1)
        h = h + gate1 * linear(attention(q, k, v), f"{p}.attn.proj")
        k, v = linear(cap, f"{p}.cross_attn.kv_linear").chunk(2, dim=-1)
        h = h + linear(attention(linear(h, f"{p}.cross_attn.q_linear"), k, v), f"{p}.cross_attn.proj")
        h = h + gate2 * linear(F.gelu(linear(norm(h) * (1 + scale2) + shift2, f"{p}.mlp.fc1"), approximate="tanh"), f"{p}.mlp.fc2")
    shift, scale = (state["final_layer.scale_shift_table"][None] + temb[:, None]).chunk(2, dim=1)
    out = linear(norm(h) * (1 + scale) + shift, "final_layer.linear")
    c = out.shape[-1] // PATCH**2
    out = out.reshape(b, GRID, GRID, PATCH, PATCH, c)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(b, c, GRID * PATCH, GRID * PATCH)


@pytest.mark.parametrize("ms", [False, True], ids=["PixArt", "PixArtMS"])
def test_original_diffusers_original_round_trip_is_exact(ms, tmp_path):
    original = tiny_original(ms)
    write_original_checkpoint(original, tmp_path / "tiny.pth")
    checkpoint = load_original_checkpoint(tmp_path / "tiny.pth")
    back = diffusers_to_original(checkpoint.transformer.state_dict(), checkpoint.buffers)
    assert set(back) == set(original)
    assert all(torch.equal(back[k], original[k]) for k in original)
    assert checkpoint.transformer.config.use_additional_conditions is ms
    assert torch.load(tmp_path / "tiny.pth", weights_only=True).keys() == {"state_dict"}  # the official layout


@pytest.mark.parametrize("ms", [False, True], ids=["PixArt", "PixArtMS"])
def test_converted_model_computes_what_the_original_network_computes(ms, tmp_path):
    original = tiny_original(ms, seed=1)
    write_original_checkpoint(original, tmp_path / "tiny.pth")
    model = load_original_checkpoint(tmp_path / "tiny.pth").transformer
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(2, CHANNELS, GRID * PATCH, GRID * PATCH, generator=generator)
    y = torch.randn(2, 7, CAPTION, generator=generator)
    t = torch.tensor([10, 700])
    hw, ar = (torch.tensor([[64.0, 64.0], [48.0, 96.0]]), torch.tensor([[1.0], [0.5]])) if ms else (None, None)
    with torch.no_grad():
        ours = model(x, encoder_hidden_states=y, timestep=t, added_cond_kwargs={"resolution": hw, "aspect_ratio": ar}).sample
        reference = original_forward(original, x, t, y, hw, ar)
    assert ours.shape == (2, 2 * CHANNELS, GRID * PATCH, GRID * PATCH)
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [0.5, 1.0, 2.0])
def test_interpolation_scale_is_read_from_the_position_table(scale):
    config = config_from_original(tiny_original(False, scale))
    assert config["interpolation_scale"] == scale and config["sample_size"] == GRID * PATCH
    assert (config["num_attention_heads"], config["num_layers"], config["caption_channels"]) == (HEADS, DEPTH, CAPTION)


def test_a_position_table_that_is_not_pixarts_is_refused():
    original = tiny_original(False)
    original["pos_embed"] = original["pos_embed"] + 0.01
    with pytest.raises(CheckpointLayoutError, match=r"pos_embed differs from PixArt's sin-cos table at scale [\d.]+ by 1\.\d+e-02"):
        config_from_original(original)
    original["pos_embed"] = torch.zeros_like(original["pos_embed"])
    with pytest.raises(CheckpointLayoutError, match="pos_embed is not a sin-cos position table"):
        config_from_original(original)


def test_unknown_keys_and_missing_files_are_named(tmp_path):
    original = tiny_original(False)
    original["blocks.0.attn.rel_pos_h"] = torch.zeros(3)
    with pytest.raises(CheckpointLayoutError, match=r"unknown keys \['blocks.0.attn.rel_pos_h'\]"):
        original_to_diffusers(original)
    with pytest.raises(MissingWeightsError) as err:
        read_original_checkpoint(tmp_path / "PixArt-XL-2-1024-MS.pth")
    assert str(err.value) == (
        f"PixArt checkpoint '{tmp_path / 'PixArt-XL-2-1024-MS.pth'}' is not available: no such file or folder. Download "
        "an official one (e.g. `hf download PixArt-alpha/PixArt-alpha PixArt-XL-2-1024-MS.pth`) or give a run name, "
        "a diffusers transformer folder or a pipeline folder."
    )
    torch.save({"model": {}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointLayoutError, match=r"expected a state dict or a dict with 'state_dict', found \['model'\]"):
        read_original_checkpoint(tmp_path / "other.pth")


def test_training_checkpoints_give_their_ema_weights_on_request(tmp_path):
    raw, ema = tiny_original(False, seed=0), tiny_original(False, seed=1)
    torch.save({"state_dict": raw, "state_dict_ema": ema, "epoch": 3}, tmp_path / "epoch_3.pth")
    assert torch.equal(read_original_checkpoint(tmp_path / "epoch_3.pth", ema=True)["t_block.1.weight"], ema["t_block.1.weight"])
    assert torch.equal(read_original_checkpoint(tmp_path / "epoch_3.pth")["t_block.1.weight"], raw["t_block.1.weight"])


# PixArt-XL/2 as diffusers ships it (PixArt-alpha/PixArt-XL-2-{512x512,1024-MS}/transformer/config.json).
XL2 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28, patch_size=2,
    caption_channels=4096, cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
)  # fmt: skip


@pytest.mark.parametrize(
    "image_size, ms, parameters", [(512, False, 610_856_096), (1024, True, 611_349_152)], ids=["XL-2-512", "XL-2-1024-MS"]
)
def test_xl2_key_sets_and_shapes_match_diffusers_on_meta(image_size, ms, parameters):
    with torch.device("meta"):
        diffusers_model = PixArtTransformer2DModel(**XL2, sample_size=image_size // 8)
    assert sum(p.numel() for p in diffusers_model.parameters()) == parameters  # ~0.6B
    assert diffusers_model.config.use_additional_conditions in (None, ms) and diffusers_model.use_additional_conditions is ms
    expected = original_shapes(1152, 28, 2, 4, 4096, image_size // 16, ms)
    original = {k: torch.empty(s, device="meta") for k, s in expected.items()}
    assert sum(v.numel() for k, v in original.items() if k not in ("pos_embed", "y_embedder.y_embedding")) == parameters

    state, buffers = original_to_diffusers(original)
    assert set(buffers) == {"pos_embed", "y_embedder.y_embedding"}
    diffusers_model.load_state_dict(state, strict=True, assign=True)  # every key, every shape
    back = diffusers_to_original(diffusers_model.state_dict(), buffers)
    assert {k: tuple(v.shape) for k, v in back.items()} == expected
