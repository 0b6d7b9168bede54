"""DiT (adaLN-Zero) -> PixArt (adaLN-single) re-parameterisation, PixArt-alpha Sec. 2.3."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel
from tiny_models import tiny_dit as build_tiny_dit

from pixart_lab.models.denoisers import tie_conditioning_embedders
from pixart_lab.models.reparam import (
    PIXART_XL_2,
    adaln_parameter_saving,
    adaln_saving_for_config,
    dit_modulations,
    pixart_config_from_dit,
    pixart_modulations,
    reparameterise,
)

ATOL = 1e-5  # absolute tolerance for all equality checks, with rtol=0
CAPTION_CHANNELS = 24


def tiny_dit(tie_emb: bool = False, norm_eps: float = 1e-6) -> DiTTransformer2DModel:
    """A 2-block DiT with every parameter randomised, so no weight sits at a trivial default."""
    dit = build_tiny_dit(sample_size=8, norm_eps=norm_eps)
    if tie_emb:  # one t/y embedder shared by all blocks, as in the original DiT
        tie_conditioning_embedders(dit)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.05)
    return dit.eval()


def run_dit(dit, x, t: int) -> torch.Tensor:
    null = torch.full((x.shape[0],), dit.config.num_embeds_ada_norm)
    return dit(x, timestep=torch.full((x.shape[0],), t), class_labels=null).sample


def run_pixart(pixart, x, t: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    captions = torch.randn(x.shape[0], 5, CAPTION_CHANNELS, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])[: x.shape[0]]
    return pixart(
        x, encoder_hidden_states=captions, encoder_attention_mask=mask, timestep=torch.full((x.shape[0],), t)
    ).sample


@pytest.mark.parametrize("tie_emb", [False, True], ids=["own-emb", "tied-emb"])
@pytest.mark.parametrize("t_star", [500, 250])
def test_modulations_match_at_t_star(t_star: int, tie_emb: bool):
    dit = tiny_dit(tie_emb)
    pixart = reparameterise(dit, CAPTION_CHANNELS, timestep=t_star)
    want, got = dit_modulations(dit, t_star), pixart_modulations(pixart, t_star)
    assert [m.shape for m in got] == [m.shape for m in want] == [(6, 48)] * 2 + [(2, 48)]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=ATOL, msg=lambda m, i=i: f"modulation {i} (atol=1e-5): {m}")
    # Not vacuous: blocks modulate differently, and the global MLP alone does not match.
    assert not torch.allclose(want[0], want[1], atol=1e-3)
    assert not torch.allclose(got[0] - pixart.transformer_blocks[0].scale_shift_table, want[0], atol=1e-3)


@pytest.mark.parametrize("tie_emb", [False, True], ids=["own-emb", "tied-emb"])
def test_output_matches_dit_at_t_star(tie_emb: bool):
    dit = tiny_dit(tie_emb)
    pixart = reparameterise(dit, CAPTION_CHANNELS).eval()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want, got = run_dit(dit, x, 500), run_pixart(pixart, x, 500)
    assert got.shape == want.shape == (2, 8, 8, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL, msg=lambda m: f"output (atol=1e-5): {m}")
    assert all(not b.attn2.to_out[0].weight.any() for b in pixart.transformer_blocks)


def test_equality_is_a_property_of_t_star_only():
    dit = tiny_dit()
    pixart = reparameterise(dit, CAPTION_CHANNELS, timestep=500).eval()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        diff = (run_pixart(pixart, x, 100) - run_dit(dit, x, 100)).abs().max().item()
    assert diff > 1e-3
    assert (pixart_modulations(pixart, 100)[0] - dit_modulations(dit, 100)[0]).abs().max() > 1e-3


def test_config_mirrors_dit():
    cfg = pixart_config_from_dit(tiny_dit().config, CAPTION_CHANNELS)
    assert cfg["cross_attention_dim"] == 48 and cfg["interpolation_scale"] == 1
    assert cfg["out_channels"] == 8 and cfg["norm_eps"] == 1e-6 and cfg["use_additional_conditions"] is False
    assert pixart_config_from_dit(tiny_dit().config, 24, cross_attention_dim=48)["cross_attention_dim"] == 48


@pytest.mark.parametrize(("dit_eps", "overrides"), [(1e-5, {}), (1e-6, {"norm_eps": 1e-5})])
def test_mismatched_norm_eps_raises(dit_eps: float, overrides: dict):
    with pytest.raises(ValueError, match="norm_eps"):
        reparameterise(tiny_dit(norm_eps=dit_eps), CAPTION_CHANNELS, **overrides)


def test_adaln_single_saving_for_xl2():
    result = adaln_saving_for_config(PIXART_XL_2)
    d, six_d = 1152, 6912
    assert result["saving"] == 27 * (d * six_d + six_d) - 28 * six_d == 214_983_936
    assert result["total_params_adaln_single"] == 611_349_152  # paper: ~611M
    assert 0.24 < result["saving_fraction"] < 0.30


def test_adaln_saving_matches_a_real_model_count():
    """The analytic adaLN-Zero count equals the DiT's actual norm1.linear parameters."""
    dit = tiny_dit()
    real = sum(p.numel() for b in dit.transformer_blocks for p in b.norm1.linear.parameters())
    pixart = reparameterise(dit, CAPTION_CHANNELS)
    single = sum(p.numel() for p in pixart.adaln_single.linear.parameters()) + sum(
        b.scale_shift_table.numel() for b in pixart.transformer_blocks
    )
    total = sum(p.numel() for p in pixart.parameters())
    result = adaln_parameter_saving(2, 48, total)
    assert (result["adaln_zero_params"], result["adaln_single_params"]) == (real, single)
    assert result == {k: v for k, v in adaln_saving_for_config(pixart.config).items() if k in result}
