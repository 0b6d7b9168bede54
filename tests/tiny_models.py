"""Tiny denoisers shared by tests (width 48: divisible by 3, as PixArt-MS micro-conditions need)."""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel

from pixart_lab.models.denoisers import CaptionConditionalPixArt, CaptionConditionalUNet, ClassConditionalDiT

BACKBONE = dict(num_attention_heads=2, attention_head_dim=24, num_layers=2, patch_size=2, in_channels=4, out_channels=8)


def tiny_dit(seed: int = 0, sample_size: int = 16, norm_eps: float = 1e-6) -> DiTTransformer2DModel:
    torch.manual_seed(seed)
    return DiTTransformer2DModel(**BACKBONE, sample_size=sample_size, num_embeds_ada_norm=1000, norm_eps=norm_eps)


def tiny_pixart(caption_channels: int, micro_conditions: bool = False, seed: int = 0) -> PixArtTransformer2DModel:
    torch.manual_seed(seed)
    size = dict(sample_size=128, interpolation_scale=8) if micro_conditions else dict(sample_size=16, interpolation_scale=1)
    return PixArtTransformer2DModel(
        **BACKBONE, **size, cross_attention_dim=48, caption_channels=caption_channels, norm_eps=1e-6,
        use_additional_conditions=micro_conditions,
    )  # fmt: skip


def tiny_unet(cross_attention_dim: int, seed: int = 0) -> UNet2DConditionModel:
    """SD 1.5's block layout at a few thousand parameters, epsilon only (4 -> 4 channels)."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16, 16),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(1, 2, 2, 2), cross_attention_dim=cross_attention_dim, norm_num_groups=4,
    )  # fmt: skip


def tiny_denoiser(kind: str, text_encoder, seed: int = 0):
    """``dit`` | ``pixart`` | ``pixart_ms`` | ``unet`` wrapped as the training module expects."""
    if kind == "dit":
        return ClassConditionalDiT(tiny_dit(seed))
    emb, mask = text_encoder.encode([""], pad_to_max_length=False)
    if kind == "unet":
        return CaptionConditionalUNet(tiny_unet(text_encoder.hidden_size, seed), emb[0], mask[0], text_length=text_encoder.max_length)
    return CaptionConditionalPixArt(tiny_pixart(text_encoder.hidden_size, kind == "pixart_ms", seed), emb[0], mask[0])
