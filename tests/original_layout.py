"""Tiny PixArt-alpha models written in the original (``.pth``) key layout, for the checkpoint tests."""

from __future__ import annotations

import torch

# Two heads of PixArt-XL's head size 72, as the embedded backbone: the width then tells the number of heads.
WIDTH, HEADS, DEPTH, PATCH, CHANNELS, CAPTION, GRID = 144, 2, 2, 2, 4, 32, 4


def pixart_position_table(width: int, grid: int, scale: float) -> torch.Tensor:
    """PixArt's fixed 2-D sin-cos table, from its definition: the first half of the channels encodes the
    column, the second the row, positions divided by ``lewei_scale``; frequencies 1 / 10000^(k / (width/4))."""
    positions = torch.arange(grid, dtype=torch.float64) / scale
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width / 4))

    def encode(p: torch.Tensor) -> torch.Tensor:
        angles = p[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    column, row = positions.repeat(grid), positions.repeat_interleave(grid)
    return torch.cat([encode(column), encode(row)], dim=1).float()[None]


def original_shapes(width: int, depth: int, patch: int, channels: int, caption: int, grid: int, ms: bool) -> dict:
    """Every tensor of the original PixArt / PixArtMS network and its shape (diffusion/model/nets/PixArt*.py)."""
    shapes = {
        "x_embedder.proj.weight": (width, channels, patch, patch), "x_embedder.proj.bias": (width,),
        "t_embedder.mlp.0.weight": (width, 256), "t_embedder.mlp.0.bias": (width,),
        "t_embedder.mlp.2.weight": (width, width), "t_embedder.mlp.2.bias": (width,),
        "t_block.1.weight": (6 * width, width), "t_block.1.bias": (6 * width,),
        "y_embedder.y_proj.fc1.weight": (width, caption), "y_embedder.y_proj.fc1.bias": (width,),
        "y_embedder.y_proj.fc2.weight": (width, width), "y_embedder.y_proj.fc2.bias": (width,),
        "y_embedder.y_embedding": (120, caption), "pos_embed": (1, grid * grid, width),
        "final_layer.linear.weight": (patch * patch * 2 * channels, width),
        "final_layer.linear.bias": (patch * patch * 2 * channels,), "final_layer.scale_shift_table": (2, width),
    }  # fmt: skip
    if ms:
        for name in ("csize_embedder", "ar_embedder"):
            shapes |= {f"{name}.mlp.0.weight": (width // 3, 256), f"{name}.mlp.0.bias": (width // 3,),
                       f"{name}.mlp.2.weight": (width // 3, width // 3), f"{name}.mlp.2.bias": (width // 3,)}  # fmt: skip
    for i in range(depth):
        shapes |= {
            f"blocks.{i}.scale_shift_table": (6, width),
            f"blocks.{i}.attn.qkv.weight": (3 * width, width), f"blocks.{i}.attn.qkv.bias": (3 * width,),
            f"blocks.{i}.attn.proj.weight": (width, width), f"blocks.{i}.attn.proj.bias": (width,),
            f"blocks.{i}.cross_attn.q_linear.weight": (width, width), f"blocks.{i}.cross_attn.q_linear.bias": (width,),
            f"blocks.{i}.cross_attn.kv_linear.weight": (2 * width, width), f"blocks.{i}.cross_attn.kv_linear.bias": (2 * width,),
            f"blocks.{i}.cross_attn.proj.weight": (width, width), f"blocks.{i}.cross_attn.proj.bias": (width,),
            f"blocks.{i}.mlp.fc1.weight": (4 * width, width), f"blocks.{i}.mlp.fc1.bias": (4 * width,),
            f"blocks.{i}.mlp.fc2.weight": (width, 4 * width), f"blocks.{i}.mlp.fc2.bias": (width,),
        }  # fmt: skip
    return shapes


def tiny_original(ms: bool, scale: float = 1.0, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny model written in the original key layout: random weights, PixArt's position table."""
    generator = torch.Generator().manual_seed(seed)
    state = {
        key: torch.randn(shape, generator=generator) * 0.2
        for key, shape in original_shapes(WIDTH, DEPTH, PATCH, CHANNELS, CAPTION, GRID, ms).items()
    }
    state["pos_embed"] = pixart_position_table(WIDTH, GRID, scale)
    return state
