"""The networks the curriculum trains, behind one call: ``denoiser(x_t, t, batch) -> eps ‖ variance``.

* :class:`ClassConditionalDiT` -- stage 1 (pixel dependency): diffusers ``DiTTransformer2DModel``
  (adaLN-Zero) conditioned on class labels.
* :class:`CaptionConditionalPixArt` -- stages 2-3: diffusers ``PixArtTransformer2DModel``
  (adaLN-single + cross-attention to frozen T5 tokens, optionally the resolution / aspect-ratio
  micro-conditions of PixArt's 1024-MS model).
* :class:`CaptionConditionalUNet` -- the SD-class baseline: diffusers ``UNet2DConditionModel`` in
  Stable Diffusion 1.5's layout, cross-attending to the same cached T5 tokens.

The transformers predict ``2 x latent channels`` (epsilon, then IDDPM's learned-variance values);
the UNet predicts epsilon only, as SD does. Each also knows how to drop its condition for
classifier-free guidance, so the training module stays agnostic of what conditions the network.
"""

from __future__ import annotations

import torch
from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DConditionModel
from torch import nn

from pixart_lab.models.text_encoder import FrozenTextEncoder


class Denoiser(nn.Module):
    """A diffusers network plus the conditioning it reads from a feature batch.

    ``component`` names the network's attribute, which is also its component name in a diffusers
    pipeline (``transformer`` or ``unet``) and its folder in a run's export.
    """

    component = "transformer"

    @property
    def network(self) -> nn.Module:
        """The diffusers model being trained (the one that is exported)."""
        return getattr(self, self.component)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def drop_conditions(self, batch: dict, drop: torch.Tensor) -> dict:
        """``batch`` with the condition of the rows where ``drop`` is True replaced by the null one."""
        raise NotImplementedError

    @property
    def latent_channels(self) -> int:
        return int(self.network.config.in_channels)


def tie_conditioning_embedders(dit: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Share block 0's timestep/label embedder with every block, as in the original DiT.

    diffusers' DiT gives each block its own copy (checkpoints converted from DiT hold equal copies);
    trained from scratch, untied copies would cost ``num_layers`` label tables and timestep MLPs.
    """
    shared = dit.transformer_blocks[0].norm1.emb
    for block in dit.transformer_blocks[1:]:
        block.norm1.emb = shared
    return dit


class ClassConditionalDiT(Denoiser):
    """Stage 1: DiT on class labels; the null class (index ``num_embeds_ada_norm``) is the CFG condition.

    The null index is what diffusers' ``DiTPipeline`` passes as the unconditional class (1000, the
    ImageNet table size), so DiT configs keep ``num_embeds_ada_norm: 1000`` and use the first rows.
    """

    def __init__(self, transformer: DiTTransformer2DModel, tie_embedders: bool = True):
        super().__init__()
        self.transformer = tie_conditioning_embedders(transformer) if tie_embedders else transformer
        # diffusers' LabelEmbedding drops labels itself, independently in every block; the module
        # drops them once per sample instead (drop_conditions), so each block sees the same label.
        for block in self.transformer.transformer_blocks:
            block.norm1.emb.class_embedder.dropout_prob = 0.0

    @property
    def null_class(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["label"]
        if (labels < 0).any() or (labels > self.null_class).any():
            raise ValueError(f"class labels must lie in [0, {self.null_class}]; got {labels.min()}..{labels.max()}")
        return self.transformer(x_t, timestep=t, class_labels=labels).sample

    def drop_conditions(self, batch: dict, drop: torch.Tensor) -> dict:
        return {**batch, "label": torch.where(drop, torch.full_like(batch["label"], self.null_class), batch["label"])}


class CaptionConditioned(Denoiser):
    """A network conditioned on frozen-T5 caption tokens; CFG dropout replaces them by T5("").

    The null caption is the frozen T5's encoding of the empty string with its mask (one ``</s>``
    token): what the diffusers pipelines encode for the negative prompt ``""``.
    """

    def __init__(self, null_caption_emb: torch.Tensor, null_caption_mask: torch.Tensor):
        super().__init__()
        self.register_buffer("null_caption_emb", null_caption_emb.reshape(-1, null_caption_emb.shape[-1]).float())
        self.register_buffer("null_caption_mask", null_caption_mask.reshape(-1).long())

    def drop_conditions(self, batch: dict, drop: torch.Tensor) -> dict:
        emb, mask = batch["caption_emb"], batch["caption_mask"]
        length = emb.shape[1]
        null_emb = torch.zeros_like(emb[0])
        null_mask = torch.zeros_like(mask[0])
        n = min(length, len(self.null_caption_mask))
        null_emb[:n], null_mask[:n] = self.null_caption_emb[:n], self.null_caption_mask[:n]
        keep = ~drop
        return {
            **batch,
            "caption_emb": torch.where(keep[:, None, None], emb, null_emb),
            "caption_mask": torch.where(keep[:, None], mask, null_mask),
        }


class CaptionConditionalPixArt(CaptionConditioned):
    """Stages 2-3: PixArt on T5 caption tokens (and, if configured, PixArt-MS micro-conditions).

    The original code drops captions to a learned ``y_embedding`` instead of T5(""), which diffusers'
    ``PixArtAlphaPipeline`` never uses, so a model trained that way would be guided against a
    condition it never saw.
    """

    def __init__(self, transformer: PixArtTransformer2DModel, null_caption_emb: torch.Tensor, null_caption_mask: torch.Tensor):
        super().__init__(null_caption_emb, null_caption_mask)
        self.transformer = transformer

    @property
    def micro_conditioned(self) -> bool:
        return bool(self.transformer.use_additional_conditions)

    def added_conditions(self, batch: dict) -> dict:
        """PixArt-MS micro-conditions: image size (h, w) in pixels and aspect ratio h / w, as the pipeline passes them."""
        if not self.micro_conditioned:
            return {"resolution": None, "aspect_ratio": None}
        hw = batch["hw"].float()
        return {"resolution": hw, "aspect_ratio": (hw[:, 0] / hw[:, 1]).unsqueeze(1)}

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        return self.transformer(
            x_t,
            encoder_hidden_states=batch["caption_emb"],
            encoder_attention_mask=batch["caption_mask"],
            timestep=t,
            added_cond_kwargs=self.added_conditions(batch),
        ).sample



def unmasked_context(emb: torch.Tensor, mask: torch.Tensor, length: int) -> torch.Tensor:
    """Caption tokens as Stable Diffusion's UNet reads them: no attention mask, a fixed length.

    Masked positions are zeroed and the tokens zero-padded (or cut) to ``length``. SD attends to all
    77 CLIP positions without a mask; zero tokens give zero keys and values (its attention has no
    bias), so training and sampling see the same context whatever the batch's padding was.
    """
    emb = emb * mask.unsqueeze(-1).to(emb.dtype)
    emb = emb[:, :length]
    return torch.nn.functional.pad(emb, (0, 0, 0, length - emb.shape[1]))


class CaptionConditionalUNet(CaptionConditioned):
    """The SD-class baseline: a UNet2DConditionModel on the same T5 tokens, fixed-variance epsilon."""

    component = "unet"

    def __init__(self, unet: UNet2DConditionModel, null_caption_emb: torch.Tensor, null_caption_mask: torch.Tensor, text_length: int = 120):
        super().__init__(null_caption_emb, null_caption_mask)
        self.unet, self.text_length = unet, int(text_length)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, batch: dict) -> torch.Tensor:
        context = unmasked_context(batch["caption_emb"], batch["caption_mask"], self.text_length)
        return self.unet(x_t, t, encoder_hidden_states=context).sample


def null_caption(
    text_encoder: str, max_length: int, caption_channels: int, dtype: str | None = None, load_in_8bit: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen text encoder's T5("") and its mask, checked against the network's caption width
    (the encoder loaded once, in ``dtype`` / 8 bits where configured: T5-XXL is 19 GB in float32)."""
    encoder = FrozenTextEncoder.from_pretrained(text_encoder, max_length=max_length, dtype=dtype, load_in_8bit=load_in_8bit)
    if encoder.hidden_size != caption_channels:
        raise ValueError(
            f"the model reads {caption_channels}-dim caption tokens but the text encoder at {text_encoder} "
            f"produces {encoder.hidden_size}; set the model's caption width to match"
        )
    emb, mask = encoder.encode([""], pad_to_max_length=False)
    return emb[0], mask[0]


def caption_conditional_pixart(
    transformer: PixArtTransformer2DModel,
    text_encoder: str,
    max_length: int = 120,
    text_encoder_dtype: str | None = None,
    load_in_8bit: bool = False,
) -> CaptionConditionalPixArt:
    """Wrap ``transformer`` with the null caption of the frozen text encoder at ``text_encoder``."""
    caption = null_caption(text_encoder, max_length, transformer.config.caption_channels, text_encoder_dtype, load_in_8bit)
    return CaptionConditionalPixArt(transformer, *caption)


def caption_conditional_unet(unet: UNet2DConditionModel, text_encoder: str, max_length: int = 120) -> CaptionConditionalUNet:
    """Wrap ``unet`` with the null caption of the frozen text encoder; it reads ``max_length`` tokens."""
    width = unet.config.encoder_hid_dim or unet.config.cross_attention_dim
    return CaptionConditionalUNet(unet, *null_caption(text_encoder, max_length, width), text_length=max_length)


def count_parameters(module: nn.Module) -> int:
    """Distinct parameters (tied ones once)."""
    return sum(p.numel() for p in module.parameters())
