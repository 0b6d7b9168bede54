"""ControlNet-Transformer (PixArt-delta, arXiv 2401.05252, Section 3 "ControlNet-Transformer").

The base PixArt stays frozen. Trainable copies of its first N blocks (13 of 28 for XL/2) form a side
chain that reads the control image's VAE latent, patch-embedded by the *base* patch embedding::

    h_1 = base_block_0(h_0)
    c_1 = copy_0(h_1 + before_proj(embed(control)))          c_{i+1} = copy_i(c_i)     (i = 1..N-1)
    h_{i+1} = base_block_i(h_i + after_proj_{i-1}(c_i))      for i = 1..N, other blocks unchanged

``before_proj`` and every ``after_proj`` start at zero, so at initialisation every residual is exactly
zero and the controlled model computes exactly the base model's function (a test checks equality).
The chain needs only ``h_1``, so all N residuals are computed before the base blocks that take them.

:class:`PixArtControlNet` holds only the trainable part (a diffusers ``ModelMixin``: ``save_pretrained``
/ ``from_pretrained``); :func:`controlled_forward` runs it with a base ``PixArtTransformer2DModel``;
:class:`EdgeControlledPixArt` is the training module's denoiser (caption dropout as in stages 2-3,
the control latent always present).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ConfigMixin, ModelMixin, PixArtTransformer2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn
from torch.utils.checkpoint import checkpoint

from pixart_lab.diffusion.sampling import load_transformer, resolve_source
from pixart_lab.models.denoisers import CaptionConditionalPixArt, null_caption


def base_config(transformer: PixArtTransformer2DModel) -> dict[str, Any]:
    """The base transformer's constructor arguments (diffusers' bookkeeping keys dropped)."""
    return {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}


class PixArtControlNet(ModelMixin, ConfigMixin):
    """Copies of the base's first ``num_layers`` blocks, a zero ``before_proj`` and zero ``after_proj`` s.

    ``transformer_config`` is the base's config: the copies are built exactly as diffusers builds the
    base's blocks, so their weights load one-to-one from it (:meth:`from_transformer`).
    """

    @register_to_config
    def __init__(self, transformer_config: dict[str, Any], num_layers: int = 13):
        super().__init__()
        base_layers = int(transformer_config["num_layers"])
        if not 1 <= num_layers < base_layers:
            raise ValueError(
                f"controlnet num_layers={num_layers}: copies feed base blocks 1..N, so N must lie in "
                f"[1, {base_layers - 1}] for a {base_layers}-block base"
            )
        skeleton = PixArtTransformer2DModel.from_config({**transformer_config, "num_layers": num_layers})
        self.blocks = skeleton.transformer_blocks
        width = skeleton.inner_dim
        self.before_proj = nn.Linear(width, width)
        self.after_proj = nn.ModuleList(nn.Linear(width, width) for _ in range(num_layers))
        for projection in (self.before_proj, *self.after_proj):
            nn.init.zeros_(projection.weight)
            nn.init.zeros_(projection.bias)

    @classmethod
    def from_transformer(cls, transformer: PixArtTransformer2DModel, num_layers: int) -> PixArtControlNet:
        """A ControlNet whose copies start as the base's first ``num_layers`` blocks."""
        controlnet = cls(base_config(transformer), num_layers)
        for copy, block in zip(controlnet.blocks, transformer.transformer_blocks):
            copy.load_state_dict(block.state_dict())
        return controlnet if transformer.dtype == torch.float32 else controlnet.to(transformer.dtype)

    def forward(
        self, hidden_states: torch.Tensor, control_tokens: torch.Tensor, checkpointed: bool = False, **block_kwargs
    ) -> list[torch.Tensor]:
        """The residuals added before base blocks 1..N, from ``h_1`` and the embedded control."""
        c = hidden_states + self.before_proj(control_tokens)
        residuals = []
        for block, after_proj in zip(self.blocks, self.after_proj):
            c = run_block(block, c, checkpointed, block_kwargs)
            residuals.append(after_proj(c))
        return residuals


def run_block(block: nn.Module, tokens: torch.Tensor, checkpointed: bool, block_kwargs: dict) -> torch.Tensor:
    """One transformer block, recomputed in the backward pass when ``checkpointed`` (and training)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, tokens, use_reentrant=False, **block_kwargs)
    return block(tokens, **block_kwargs)


def controlled_forward(
    transformer: PixArtTransformer2DModel,
    controlnet: PixArtControlNet | None,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_attention_mask: torch.Tensor | None = None,
    control: torch.Tensor | None = None,
    added_cond_kwargs: dict | None = None,
) -> torch.Tensor:
    """``transformer``'s output (epsilon ‖ variance) with the ControlNet residuals of ``control`` added.

    ``control`` is the control image's scaled VAE latent, shaped like ``hidden_states``. Without a
    ControlNet or a control this is the base model's own forward. The input and output steps follow
    diffusers' ``PixArtTransformer2DModel.forward`` op for op, which the zero-init test holds to.
    """
    if controlnet is None or control is None:
        return transformer(
            hidden_states, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
            encoder_attention_mask=encoder_attention_mask, added_cond_kwargs=added_cond_kwargs,
        ).sample  # fmt: skip
    if control.shape != hidden_states.shape:
        raise ValueError(f"control latent {tuple(control.shape)} must match the noisy latent {tuple(hidden_states.shape)}")
    n, _, height, width = hidden_states.shape
    p = transformer.config.patch_size
    if encoder_attention_mask is not None and encoder_attention_mask.ndim == 2:  # keep/discard -> additive bias
        encoder_attention_mask = ((1 - encoder_attention_mask.to(hidden_states.dtype)) * -10000.0).unsqueeze(1)

    tokens = transformer.pos_embed(hidden_states)
    t, embedded_t = transformer.adaln_single(timestep, added_cond_kwargs, batch_size=n, hidden_dtype=tokens.dtype)
    context = transformer.caption_projection(encoder_hidden_states).view(n, -1, tokens.shape[-1])
    block_kwargs = dict(encoder_hidden_states=context, encoder_attention_mask=encoder_attention_mask, timestep=t)
    checkpointed = transformer.gradient_checkpointing  # DiffusionModule's switch; it covers the copies too

    blocks = transformer.transformer_blocks
    tokens = run_block(blocks[0], tokens, checkpointed, block_kwargs)
    residuals = controlnet(tokens, transformer.pos_embed(control.to(tokens.dtype)), checkpointed, **block_kwargs)
    for i, block in enumerate(blocks[1:]):
        if i < len(residuals):
            tokens = tokens + residuals[i]
        tokens = run_block(block, tokens, checkpointed, block_kwargs)

    # PixArt's output layer: final adaLN-single modulation, linear, unpatchify.
    shift, scale = (transformer.scale_shift_table[None] + embedded_t[:, None]).chunk(2, dim=1)
    tokens = transformer.proj_out(transformer.norm_out(tokens) * (1 + scale) + shift)
    c = transformer.out_channels
    tokens = tokens.reshape(n, height // p, width // p, p, p, c)
    return torch.einsum("nhwpqc->nchpwq", tokens).reshape(n, c, height, width)


class EdgeControlledPixArt(CaptionConditionalPixArt):
    """The frozen base PixArt plus a trainable ControlNet; the control latent comes from ``batch["control"]``.

    Only the caption is dropped for classifier-free guidance: the control is always present, in
    training and in both branches of guided sampling (the guidance is on the text, as in PixArt-delta).
    """

    def __init__(self, transformer: PixArtTransformer2DModel, controlnet: PixArtControlNet, null_caption_emb, null_caption_mask):
        super().__init__(transformer, null_caption_emb, null_caption_mask)
        self.transformer.requires_grad_(False).eval()
        self.controlnet = controlnet.requires_grad_(True)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        if "control" not in batch:
            raise KeyError("a ControlNet batch needs 'control' (the control image's latent); use the control feature cache")
        return controlled_forward(
            self.transformer, self.controlnet, x_t, t, batch["caption_emb"], batch["caption_mask"],
            batch["control"], self.added_conditions(batch),
        )  # fmt: skip

    def train(self, mode: bool = True) -> EdgeControlledPixArt:
        super().train(mode)
        self.transformer.eval()  # frozen: no dropout, whatever the training loop asks
        return self


def edge_controlled_pixart(
    base: str, text_encoder: str, num_layers: int, checkpoints_dir: str = "checkpoints", max_length: int = 120
) -> EdgeControlledPixArt:
    """The denoiser of ``train_controlnet``: the base (a run name, transformer or pipeline folder) with ``num_layers`` copies."""
    folder = resolve_source(base, checkpoints_dir)
    if (folder / "model_index.json").is_file():
        folder = folder / "transformer"
    transformer = load_transformer(folder)
    if not isinstance(transformer, PixArtTransformer2DModel):
        raise TypeError(f"{folder}: a ControlNet-Transformer needs a PixArt base, found {type(transformer).__name__}")
    controlnet = PixArtControlNet.from_transformer(transformer, num_layers)
    return EdgeControlledPixArt(transformer, controlnet, *null_caption(text_encoder, max_length, transformer.config.caption_channels))
