"""Re-parameterise a class-conditional DiT (adaLN-Zero) into PixArt (adaLN-single + cross-attention).

PixArt-alpha (arXiv 2310.00426), Section 2.3: adaLN-single replaces every block's own
adaLN-Zero MLP by one global MLP on the timestep, ``T = MLP(t)``, plus a learnable per-block
table ``E_i``, so block ``i`` uses ``S_i = E_i + T`` (shift/scale/gate for attention and MLP).
To start from ImageNet-pretrained DiT weights, the paper initialises the global MLP from the
DiT's and solves the tables so that ``S_i`` equals the DiT's modulation at a chosen timestep
t* (t* = 500) with the null class.  The new cross-attention output projections are zero, so
the converted model reproduces the DiT's output exactly at t*.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel
from torch import nn

__all__ = [
    "PIXART_XL_2",
    "adaln_parameter_saving",
    "adaln_saving_for_config",
    "dit_modulations",
    "pixart_config_from_dit",
    "pixart_modulations",
    "reparameterise",
]

#: The PixArt-alpha XL/2 transformer (Table/Section 2.3 of the paper; 1024px: sample_size=128).
PIXART_XL_2: dict[str, Any] = dict(
    num_attention_heads=16,
    attention_head_dim=72,
    num_layers=28,
    in_channels=4,
    out_channels=8,
    sample_size=128,
    caption_channels=4096,
    cross_attention_dim=1152,
)

# DiT config keys that carry over unchanged to PixArtTransformer2DModel.
_SHARED_KEYS = (
    "num_attention_heads",
    "attention_head_dim",
    "in_channels",
    "num_layers",
    "dropout",
    "norm_num_groups",
    "attention_bias",
    "sample_size",
    "patch_size",
    "activation_fn",
    "num_embeds_ada_norm",
    "upcast_attention",
    "norm_elementwise_affine",
    "norm_eps",
)


def pixart_config_from_dit(
    dit_config: Mapping[str, Any],
    caption_channels: int,
    cross_attention_dim: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """PixArt kwargs with the DiT's architecture (Sec. 2.3: PixArt keeps DiT's blocks).

    ``interpolation_scale=1`` keeps the 2-D sin-cos position embedding identical to DiT's;
    ``cross_attention_dim`` defaults to the inner dim; size conditions are disabled.
    """
    cfg = dict(dit_config)
    inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    out_channels = cfg.get("out_channels") or cfg["in_channels"]
    kwargs = {k: cfg[k] for k in _SHARED_KEYS if k in cfg}
    kwargs.update(
        out_channels=out_channels,
        cross_attention_dim=inner if cross_attention_dim is None else cross_attention_dim,
        caption_channels=caption_channels,
        norm_type="ada_norm_single",
        interpolation_scale=1,
        use_additional_conditions=False,
    )
    kwargs.update(overrides)
    return kwargs


def _t(timestep: int | float | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(timestep).reshape(1)


def _frozen_copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Eval-mode copy in ``dtype`` (eval: no label dropout in DiT's ``LabelEmbedding``)."""
    return copy.deepcopy(module).to(dtype).eval()


@torch.no_grad()
def dit_modulations(
    dit: DiTTransformer2DModel,
    timestep: int | float | torch.Tensor,
    class_label: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """DiT adaLN-Zero modulations: one ``[6, D]`` per block, then the final layer's ``[2, D]``.

    Block rows are (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp); the final
    rows are (shift, scale).  ``class_label=None`` is the null (CFG) class ``num_embeds_ada_norm``.
    Each block uses its own ``norm1.emb`` and ``norm1.linear`` (tied or not).
    """
    label = dit.config.num_embeds_ada_norm if class_label is None else class_label
    t, y = _t(timestep), torch.tensor([label])
    mods = []
    for block in dit.transformer_blocks:
        norm1 = _frozen_copy(block.norm1, dtype)
        cond = norm1.emb(t, y, hidden_dtype=dtype)
        mods.append(norm1.linear(F.silu(cond)).reshape(6, -1))
    cond = _frozen_copy(dit.transformer_blocks[0].norm1.emb, dtype)(t, y, hidden_dtype=dtype)
    mods.append(_frozen_copy(dit.proj_out_1, dtype)(F.silu(cond)).reshape(2, -1))
    return mods


def _adaln_single(
    pixart: PixArtTransformer2DModel, timestep: int | float | torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global adaLN-single outputs ``(T [6, D], E [D])`` of Sec. 2.3 at one timestep."""
    adaln = _frozen_copy(pixart.adaln_single, dtype)
    big_t, emb = adaln(_t(timestep), None, batch_size=1, hidden_dtype=dtype)
    return big_t.reshape(6, -1), emb.reshape(-1)


@torch.no_grad()
def pixart_modulations(
    pixart: PixArtTransformer2DModel,
    timestep: int | float | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> list[torch.Tensor]:
    """PixArt adaLN-single modulations ``S_i = E_i + T`` (``[6, D]`` each), then final ``[2, D]``."""
    big_t, emb = _adaln_single(pixart, timestep, dtype)
    mods = [block.scale_shift_table.to(dtype) + big_t for block in pixart.transformer_blocks]
    mods.append(pixart.scale_shift_table.to(dtype) + emb)
    return mods


def _check_norm_eps(dit: DiTTransformer2DModel, pixart: PixArtTransformer2DModel) -> None:
    """Both LayerNorms of every block must use the same eps in DiT and PixArt."""
    d, p = dit.transformer_blocks[0], pixart.transformer_blocks[0]
    pairs = {"attention (norm1)": (d.norm1.norm.eps, p.norm1.eps), "MLP": (d.norm3.eps, p.norm2.eps)}
    for where, (dit_eps, pix_eps) in pairs.items():
        if dit_eps != pix_eps:
            raise ValueError(
                f"norm_eps mismatch in the {where} LayerNorm: DiT uses {dit_eps}, PixArt {pix_eps} "
                f"(DiT config norm_eps={dit.config.norm_eps}, PixArt norm_eps={pixart.config.norm_eps}; "
                "AdaLayerNormZero hard-codes 1e-6, so set norm_eps=1e-6 on both)."
            )


@torch.no_grad()
def reparameterise(
    dit: DiTTransformer2DModel,
    caption_channels: int,
    timestep: int = 500,
    **overrides: Any,
) -> PixArtTransformer2DModel:
    """Convert a DiT (adaLN-Zero) into a PixArt (adaLN-single) model, PixArt-alpha Sec. 2.3.

    Shared weights (patch embedding, self-attention, FFN, output projection) are copied; the
    global adaLN-single MLP is block 0's adaLN-Zero MLP; then, in float64,

        E_i   = MLP_i(c(t*, null)) - T(t*)            (per block, [6, D])
        E_out = proj_out_1(c(t*, null)) - E(t*)       (final layer, [2, D])

    so that ``E_i + T(t*)`` equals the DiT's modulation of block ``i`` (and likewise for the final
    shift/scale).  Cross-attention ``to_out`` is zeroed, so the output equals the DiT's at t*
    with the null class.  Equality holds exactly at t* only: DiT's sinusoid uses
    ``downscale_freq_shift=1`` and PixArt's ``0``, and the class embedding is gone.
    ``overrides`` go to :func:`pixart_config_from_dit` (e.g. ``cross_attention_dim``).
    """
    pixart = PixArtTransformer2DModel(**pixart_config_from_dit(dit.config, caption_channels, **overrides))
    _check_norm_eps(dit, pixart)
    pixart.pos_embed.load_state_dict(dit.pos_embed.state_dict())
    for src, dst in zip(dit.transformer_blocks, pixart.transformer_blocks, strict=True):
        dst.attn1.load_state_dict(src.attn1.state_dict())
        dst.ff.load_state_dict(src.ff.state_dict())
        nn.init.zeros_(dst.attn2.to_out[0].weight)
        nn.init.zeros_(dst.attn2.to_out[0].bias)
    pixart.proj_out.load_state_dict(dit.proj_out_2.state_dict())
    norm1 = dit.transformer_blocks[0].norm1
    pixart.adaln_single.emb.timestep_embedder.load_state_dict(norm1.emb.timestep_embedder.state_dict())
    pixart.adaln_single.linear.load_state_dict(norm1.linear.state_dict())

    target = dit_modulations(dit, timestep, dtype=torch.float64)
    big_t, emb = _adaln_single(pixart, timestep, torch.float64)
    for block, mod in zip(pixart.transformer_blocks, target[:-1], strict=True):
        block.scale_shift_table.copy_((mod - big_t).float())
    pixart.scale_shift_table.copy_((target[-1] - emb).float())
    dtype = next(dit.parameters()).dtype
    return pixart if dtype == torch.float32 else pixart.to(dtype)


def adaln_parameter_saving(num_layers: int, hidden_size: int, total_params_adaln_single: int) -> dict[str, float]:
    """Analytic adaLN-Zero vs adaLN-single parameter counts (PixArt-alpha Sec. 2.3, ~27% saving).

    adaLN-Zero: ``L`` MLPs ``D -> 6D`` (``6D^2 + 6D`` each); adaLN-single: one such MLP plus a
    ``6 x D`` table per block.  The final layer's ``D -> 2D`` vs ``2 x D`` table is not counted.
    ``saving_fraction`` is relative to the same model built with adaLN-Zero.
    """
    mlp = hidden_size * 6 * hidden_size + 6 * hidden_size
    zero = num_layers * mlp
    single = mlp + num_layers * 6 * hidden_size
    saving = zero - single
    return {
        "adaln_zero_params": zero,
        "adaln_single_params": single,
        "saving": saving,
        "saving_fraction": saving / (total_params_adaln_single + saving),
    }


def adaln_saving_for_config(pixart_kwargs: Mapping[str, Any]) -> dict[str, float]:
    """:func:`adaln_parameter_saving` for a PixArt config, counting parameters on the meta device."""
    with torch.device("meta"):
        model = PixArtTransformer2DModel(**pixart_kwargs)
    total = sum(p.numel() for p in model.parameters())
    result = adaln_parameter_saving(model.config.num_layers, model.inner_dim, total)
    return {"total_params_adaln_single": total, "total_params_adaln_zero": total + result["saving"], **result}


if __name__ == "__main__":
    for key, value in adaln_saving_for_config(PIXART_XL_2).items():
        print(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value:.4f}")
