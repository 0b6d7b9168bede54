"""Official PixArt-alpha checkpoints: the original ``.pth`` key layout <-> diffusers ``PixArtTransformer2DModel``.

The released weights (``PixArt-XL-2-256x256.pth`` and ``-512x512.pth``: ``PixArt_XL_2``;
``PixArt-XL-2-1024-MS.pth``: ``PixArtMS_XL_2`` with the size / aspect-ratio micro-conditions) hold the
network of the original code (``diffusion/model/nets/PixArt*.py``) as ``{"state_dict": {...}}``.
diffusers keeps the same tensors under other names, with the fused self-attention ``qkv`` and
cross-attention ``kv`` projections split into ``to_q`` / ``to_k`` / ``to_v``. :data:`KEY_MAP` is that
correspondence as data, the one the official converter (``scripts/convert_pixart_alpha_to_diffusers.py``)
applies, used here in both directions, so original -> diffusers -> original gives back every tensor.

Two original tensors are buffers with no diffusers parameter (:data:`ORIGINAL_BUFFERS`):

* ``pos_embed`` (1 x tokens x width): the fixed 2-D sin-cos table at the training resolution,
  positions divided by PixArt's ``lewei_scale`` (diffusers' ``interpolation_scale``; 1 at 256 and
  512 px, 2 at 1024 px). diffusers recomputes it from the config, so the table is used to infer that
  scale and to check the rebuilt model against it (PixArtMS recomputes its table per bucket in
  ``forward``; its buffer still holds the table at the base size).
* ``y_embedder.y_embedding`` (120 x 4096): the null caption the original code drops captions to for
  classifier-free guidance. It is registered as a buffer, so its random initial value was never
  trained. diffusers' pipeline, and this project (the frozen T5's encoding of ``""``), guide with the
  empty prompt instead, so it is kept aside and written back on export.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from pixart_lab.utils.hub import missing_weights_error
from pixart_lab.utils.io import atomic_save

ORIGINAL_SUFFIXES = (".pth", ".pt")
POS_EMBED, NULL_CAPTION = "pos_embed", "y_embedder.y_embedding"
ORIGINAL_BUFFERS = (POS_EMBED, NULL_CAPTION)
# The original code's caption length: y_embedding has this many rows.
CAPTION_TOKENS = 120
# PixArt-XL's head size; the width alone does not tell the number of heads.
XL_HEAD_DIM = 72

# (original key, diffusers keys): ``{i}`` is a block index, ``{p}`` weight or bias. Several diffusers keys:
# the original tensor is their concatenation along dim 0 (fused q, k, v / k, v projections).
KEY_MAP: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x_embedder.proj.{p}", ("pos_embed.proj.{p}",)),
    ("t_embedder.mlp.0.{p}", ("adaln_single.emb.timestep_embedder.linear_1.{p}",)),
    ("t_embedder.mlp.2.{p}", ("adaln_single.emb.timestep_embedder.linear_2.{p}",)),
    ("csize_embedder.mlp.0.{p}", ("adaln_single.emb.resolution_embedder.linear_1.{p}",)),
    ("csize_embedder.mlp.2.{p}", ("adaln_single.emb.resolution_embedder.linear_2.{p}",)),
    ("ar_embedder.mlp.0.{p}", ("adaln_single.emb.aspect_ratio_embedder.linear_1.{p}",)),
    ("ar_embedder.mlp.2.{p}", ("adaln_single.emb.aspect_ratio_embedder.linear_2.{p}",)),
    ("t_block.1.{p}", ("adaln_single.linear.{p}",)),
    ("y_embedder.y_proj.fc1.{p}", ("caption_projection.linear_1.{p}",)),
    ("y_embedder.y_proj.fc2.{p}", ("caption_projection.linear_2.{p}",)),
    ("blocks.{i}.scale_shift_table", ("transformer_blocks.{i}.scale_shift_table",)),
    ("blocks.{i}.attn.qkv.{p}", tuple(f"transformer_blocks.{{i}}.attn1.to_{x}.{{p}}" for x in "qkv")),
    ("blocks.{i}.attn.proj.{p}", ("transformer_blocks.{i}.attn1.to_out.0.{p}",)),
    ("blocks.{i}.cross_attn.q_linear.{p}", ("transformer_blocks.{i}.attn2.to_q.{p}",)),
    ("blocks.{i}.cross_attn.kv_linear.{p}", tuple(f"transformer_blocks.{{i}}.attn2.to_{x}.{{p}}" for x in "kv")),
    ("blocks.{i}.cross_attn.proj.{p}", ("transformer_blocks.{i}.attn2.to_out.0.{p}",)),
    ("blocks.{i}.mlp.fc1.{p}", ("transformer_blocks.{i}.ff.net.0.proj.{p}",)),
    ("blocks.{i}.mlp.fc2.{p}", ("transformer_blocks.{i}.ff.net.2.{p}",)),
    ("final_layer.linear.{p}", ("proj_out.{p}",)),
    ("final_layer.scale_shift_table", ("scale_shift_table",)),
)


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(escaped + "$")


# Original -> diffusers rules, and diffusers -> original rules for every part of a target, compiled once.
_FORWARD = [(_pattern(orig), targets) for orig, targets in KEY_MAP]
_BACKWARD = [(_pattern(target), part, orig, targets) for orig, targets in KEY_MAP for part, target in enumerate(targets)]


class CheckpointLayoutError(ValueError):
    """A state dict that does not have the layout it is converted from."""


def original_to_diffusers(original: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(diffusers state dict, original buffers)`` of an original-layout state dict.

    Every key must be a :data:`KEY_MAP` entry or one of :data:`ORIGINAL_BUFFERS`; anything else (e.g.
    a window-attention ``rel_pos`` of an unreleased variant) is an error naming the keys.
    """
    converted, buffers, unknown = {}, {}, []
    for key, tensor in original.items():
        if key in ORIGINAL_BUFFERS:
            buffers[key] = tensor
            continue
        rule = next(((m, targets) for pattern, targets in _FORWARD if (m := pattern.match(key))), None)
        if rule is None:
            unknown.append(key)
            continue
        match, targets = rule
        parts = tensor.chunk(len(targets), dim=0) if len(targets) > 1 else (tensor,)
        for target, part in zip(targets, parts):
            converted[target.format(**match.groupdict())] = part.clone() if len(targets) > 1 else part
    if unknown:
        raise CheckpointLayoutError(f"not a PixArt-alpha original-layout state dict: unknown keys {sorted(unknown)[:8]}")
    return converted, buffers


def diffusers_to_original(state: Mapping[str, torch.Tensor], buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The original-layout state dict of a diffusers ``PixArtTransformer2DModel`` state dict (+ its buffers)."""
    original, unknown = {}, []
    for key in state:
        rule = next(((m, part, orig, targets) for pattern, part, orig, targets in _BACKWARD if (m := pattern.match(key))), None)
        if rule is None:
            unknown.append(key)
            continue
        match, part, orig, targets = rule
        names = [t.format(**match.groupdict()) for t in targets]
        missing = [n for n in names if n not in state]
        if missing:
            raise CheckpointLayoutError(f"diffusers state dict has {key} but not {missing}")
        if part == 0:  # the later parts of a fused projection are joined with the first
            original[orig.format(**match.groupdict())] = torch.cat([state[n] for n in names]) if len(names) > 1 else state[key]
    if unknown:
        raise CheckpointLayoutError(f"not a diffusers PixArtTransformer2DModel state dict: unknown keys {sorted(unknown)[:8]}")
    original.update(buffers or {})
    return original


def read_original_checkpoint(path: str | Path, ema: bool = False) -> dict[str, torch.Tensor]:
    """The original-layout state dict in a ``.pth``: ``{"state_dict": ...}`` (``state_dict_ema`` with
    ``ema=True``, as the original training script saves it) or a bare state dict."""
    path = Path(path)
    if not path.is_file():
        raise missing_weights_error(
            "PixArt checkpoint", path,
            "Download an official one (e.g. `hf download PixArt-alpha/PixArt-alpha PixArt-XL-2-1024-MS.pth`) or give a "
            "run name, a diffusers transformer folder or a pipeline folder.",
        )  # fmt: skip
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated zip, a pickle that needs code: torch raises many types
        raise CheckpointLayoutError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from e
    key = "state_dict_ema" if ema else "state_dict"
    if isinstance(content, dict) and key in content:
        return dict(content[key])
    if isinstance(content, dict) and content and all(isinstance(v, torch.Tensor) for v in content.values()) and not ema:
        return dict(content)
    found = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
    raise CheckpointLayoutError(f"{path}: expected a state dict or a dict with '{key}', found {found}")


def write_original_checkpoint(original: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """Save ``{"state_dict": original}`` atomically, as the official checkpoints are laid out."""
    state = {k: v.detach().cpu().contiguous() for k, v in original.items()}
    atomic_save(path, lambda tmp: torch.save({"state_dict": state}, tmp))
    return Path(path)


def sincos_table(width: int, grid: int, interpolation_scale: float) -> torch.Tensor:
    """PixArt's position table ``pos_embed`` (1 x grid^2 x width) at base size = grid."""
    table = get_2d_sincos_pos_embed(width, grid, base_size=grid, interpolation_scale=interpolation_scale, output_type="pt")
    return table.float().unsqueeze(0)


def infer_interpolation_scale(pos_embed: torch.Tensor, tolerance: float = 1e-4) -> float:
    """PixArt's ``lewei_scale`` from its position table, checked against the table diffusers rebuilds.

    Token 1 sits one column right of token 0, so its first channels are sin / cos of (1 / scale) x 1
    (the lowest frequency of the w half): scale = 1 / atan2(sin, cos), exact for scales above 1/pi.
    """
    width, tokens = pos_embed.shape[-1], pos_embed.shape[-2]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise CheckpointLayoutError(f"pos_embed has {tokens} tokens: not a square grid")
    table = pos_embed.reshape(tokens, width).float()
    angle = math.atan2(float(table[1, 0]), float(table[1, width // 4]))
    if angle <= 0:
        raise CheckpointLayoutError("pos_embed is not a sin-cos position table (its second token has angle <= 0)")
    scale = round(1.0 / angle, 4)
    error = float((sincos_table(width, grid, scale)[0] - table).abs().max())
    if error > tolerance:
        raise CheckpointLayoutError(f"pos_embed differs from PixArt's sin-cos table at scale {scale} by {error:.2e}")
    return scale


def config_from_original(original: Mapping[str, torch.Tensor], attention_head_dim: int = XL_HEAD_DIM) -> dict:
    """``PixArtTransformer2DModel`` kwargs read off an original state dict's shapes (and its position table)."""
    try:
        proj = original["x_embedder.proj.weight"]
        pos_embed = original[POS_EMBED]
        fc1 = original["y_embedder.y_proj.fc1.weight"]
        final = original["final_layer.linear.weight"]
    except KeyError as e:
        raise CheckpointLayoutError(f"original PixArt state dict lacks {e.args[0]!r}") from e
    width, in_channels, patch = proj.shape[0], proj.shape[1], proj.shape[2]
    if width % attention_head_dim:
        raise CheckpointLayoutError(f"width {width} is not a multiple of attention_head_dim={attention_head_dim}")
    grid = math.isqrt(pos_embed.shape[-2])
    return dict(
        num_attention_heads=width // attention_head_dim,
        attention_head_dim=attention_head_dim,
        in_channels=in_channels,
        out_channels=final.shape[0] // (patch * patch),
        num_layers=len({k.split(".")[1] for k in original if k.startswith("blocks.")}),
        patch_size=patch,
        sample_size=grid * patch,
        caption_channels=fc1.shape[1],
        cross_attention_dim=width,
        interpolation_scale=infer_interpolation_scale(pos_embed),
        use_additional_conditions="csize_embedder.mlp.0.weight" in original,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
    )


@dataclass
class OriginalCheckpoint:
    """An official checkpoint read into diffusers form: the transformer and the original buffers."""

    transformer: PixArtTransformer2DModel
    buffers: dict[str, torch.Tensor]


def load_original_checkpoint(path: str | Path, ema: bool = False, attention_head_dim: int = XL_HEAD_DIM) -> OriginalCheckpoint:
    """A ``PixArtTransformer2DModel`` (config inferred, weights loaded strictly) from an original ``.pth``."""
    original = read_original_checkpoint(path, ema)
    config = config_from_original(original, attention_head_dim)
    state, buffers = original_to_diffusers(original)
    with torch.device("meta"):
        transformer = PixArtTransformer2DModel(**config)
    transformer.load_state_dict(state, strict=True, assign=True)
    # The position table is a non-persistent buffer: rebuild it for real (it was made on meta).
    grid = config["sample_size"] // config["patch_size"]
    width = config["num_attention_heads"] * attention_head_dim
    transformer.pos_embed.pos_embed = sincos_table(width, grid, config["interpolation_scale"])
    return OriginalCheckpoint(transformer.eval(), buffers)


def original_buffers_for(config: Mapping, null_caption: torch.Tensor) -> dict[str, torch.Tensor]:
    """The buffers an exported ``.pth`` needs: the position table of a transformer with this ``config``
    and ``null_caption`` (``CAPTION_TOKENS`` x caption channels) as ``y_embedding``."""
    expected = (CAPTION_TOKENS, config["caption_channels"])
    if tuple(null_caption.shape) != expected:
        raise ValueError(f"null caption must be {expected} (tokens x caption channels), got {tuple(null_caption.shape)}")
    scale = config.get("interpolation_scale") or max(config["sample_size"] // 64, 1)  # diffusers' default
    width = config["num_attention_heads"] * config["attention_head_dim"]
    table = sincos_table(width, config["sample_size"] // config["patch_size"], scale)
    return {POS_EMBED: table, NULL_CAPTION: null_caption.float()}
