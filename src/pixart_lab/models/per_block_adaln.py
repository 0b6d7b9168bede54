"""PixArt with per-block adaLN modulation: the ablation of adaLN-single (PixArt-alpha, Section 2.3).

adaLN-single computes one modulation ``T = W · SiLU(emb(t)) + b`` for the whole network and block
``i`` uses ``S_i = E_i + T``. The ablated variant gives every block its own MLP, as DiT's adaLN-Zero
does (stage 1's ``DiTTransformer2DModel``): ``S_i = E_i + W_i · SiLU(emb(t)) + b_i``. The global
linear becomes the identity and each block's MLP starts as a copy of it, so both variants compute
the same function at initialisation and differ only in what training can learn -- and in
``(L - 1) · (6D² + 6D)`` parameters.

The variant is diffusers' ``PixArtTransformer2DModel`` with a forward pre-hook per block (nothing
else changes). Its weights hold ``transformer_blocks.<i>.modulation`` instead of
``adaln_single.linear``, so an export is not a plain PixArt checkpoint: the ablation compares runs
by the metrics measured during training.
"""

from __future__ import annotations

from typing import Any

from diffusers import PixArtTransformer2DModel
from torch import nn

# BasicTransformerBlock.forward(hidden_states, attention_mask, encoder_hidden_states,
# encoder_attention_mask, timestep, ...): where gradient checkpointing passes the timestep.
TIMESTEP_ARG = 4


def _block_modulation(block: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook: the block's own ``W_i · SiLU(emb(t)) + b_i`` in place of the shared ``T``."""
    if "timestep" in kwargs:
        kwargs = {**kwargs, "timestep": block.modulation(kwargs["timestep"])}
    else:
        args = (*args[:TIMESTEP_ARG], block.modulation(args[TIMESTEP_ARG]), *args[TIMESTEP_ARG + 1 :])
    return args, kwargs


def per_block_adaln(transformer: PixArtTransformer2DModel) -> PixArtTransformer2DModel:
    """Give every block of ``transformer`` its own modulation MLP (a copy of the global one), in place."""
    shared = transformer.adaln_single.linear
    if not isinstance(shared, nn.Linear):
        raise ValueError(f"expected adaLN-single's global linear layer, found {type(shared).__name__} (converted twice?)")
    for block in transformer.transformer_blocks:
        block.modulation = nn.Linear(shared.in_features, shared.out_features)
        block.modulation.load_state_dict(shared.state_dict())
        block.register_forward_pre_hook(_block_modulation, with_kwargs=True)
    # The blocks now read SiLU(emb(t)) itself; the output layer reads emb(t) as before.
    transformer.adaln_single.linear = nn.Identity()
    return transformer


def has_per_block_adaln(transformer: nn.Module) -> bool:
    """True for a transformer converted by :func:`per_block_adaln`."""
    return isinstance(getattr(getattr(transformer, "adaln_single", None), "linear", None), nn.Identity)


def per_block_adaln_pixart(**pixart_kwargs: Any) -> PixArtTransformer2DModel:
    """``PixArtTransformer2DModel(**pixart_kwargs)`` with per-block adaLN (the model config's ``_target_``)."""
    return per_block_adaln(PixArtTransformer2DModel(**pixart_kwargs))


def modulation_parameters(transformer: PixArtTransformer2DModel) -> int:
    """Parameters that turn the timestep embedding into the blocks' shift/scale/gate (MLPs and tables)."""
    mlps = [transformer.adaln_single.linear, *(getattr(b, "modulation", None) for b in transformer.transformer_blocks)]
    tables = [b.scale_shift_table for b in transformer.transformer_blocks]
    return sum(p.numel() for m in mlps if m is not None for p in m.parameters()) + sum(t.numel() for t in tables)


__all__ = ["has_per_block_adaln", "modulation_parameters", "per_block_adaln", "per_block_adaln_pixart"]
