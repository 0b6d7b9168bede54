"""The CLIP evaluator: a tiny transformers ``CLIPModel`` built here, or any CLIP checkpoint by path.

One model serves two metrics: CLIP score (torchmetrics ``CLIPScore``) and, through its image tower,
the feature space of the embedded FID. The embedded model uses the corpus tokenizer (T5 layout,
``</s>`` = 1 ends every caption, which is where CLIP's text tower pools) and sees whole images
resized, not centre-cropped, so a 3x3 scene layout keeps every cell for any aspect ratio.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerBase,
)

from pixart_lab.evaluation.attribute_probe import resize_images, to_unit_range
from pixart_lab.utils.hub import MissingWeightsError, download_hint, load_pretrained
from pixart_lab.utils.io import atomic_dir


CLIP_L14 = "openai/clip-vit-large-patch14"  # the CLIP of the paper's CLIP score


class EvaluatorMissingError(MissingWeightsError):
    """An evaluator's weights are not available locally (and cannot be downloaded offline)."""


def build_clip(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int = 64,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 4,
    heads: int = 4,
    projection_dim: int = 128,
    max_text_tokens: int = 64,
) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised CLIP of the given size with a processor around ``tokenizer``."""
    shared = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=max_text_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        **shared,
    )
    vision = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, **shared)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim))
    image_processor = CLIPImageProcessor(size={"height": image_size, "width": image_size}, do_center_crop=False)
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def load_clip(name_or_path: str | os.PathLike) -> tuple[CLIPModel, CLIPProcessor]:
    """A CLIP model and processor from a local folder or a hub name (cached, or online)."""
    hint = download_hint(name_or_path, "eval.clip", CLIP_L14)
    return load_pretrained(
        "CLIP evaluator", name_or_path, hint + " For the embedded CLIP, run the train_evaluators stage.",
        lambda local_only: (
            CLIPModel.from_pretrained(name_or_path, local_files_only=local_only).eval(),
            CLIPProcessor.from_pretrained(name_or_path, local_files_only=local_only),
        ),
        error=EvaluatorMissingError,
    )  # fmt: skip


def save_clip(model: CLIPModel, processor: CLIPProcessor, out_dir: str | os.PathLike) -> None:
    """Save model and processor together (atomically), loadable by ``load_clip`` and by transformers."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)


def pixel_values(processor: CLIPProcessor, images: torch.Tensor) -> torch.Tensor:
    """What ``processor(images=...)`` computes, as one batched tensor op (resize, normalise).

    ``images``: uint8 [0, 255] or float [-1, 1], N x 3 x H x W.
    """
    ip = processor.image_processor
    size = ip.size if "height" in ip.size else {"height": ip.size["shortest_edge"], "width": ip.size["shortest_edge"]}
    x = resize_images(to_unit_range(images), size["height"], size["width"])
    mean = torch.tensor(ip.image_mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class TensorFeatures(nn.Module):
    """A CLIPModel whose ``get_*_features`` return tensors, as torchmetrics ``CLIPScore`` expects.

    transformers 5 returns a ``BaseModelOutputWithPooling`` (projected embedding in
    ``pooler_output``) where torchmetrics 1.9 still expects the embedding tensor itself.
    """

    def __init__(self, model: CLIPModel):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        return as_embedding(self.model.get_image_features(pixel_values=pixel_values, **kwargs))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        return as_embedding(self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask, **kwargs))


def as_embedding(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def clip_score_model(name_or_path: str | os.PathLike) -> Callable[[], tuple[nn.Module, CLIPProcessor]]:
    """The callable torchmetrics ``CLIPScore(model_name_or_path=...)`` takes: our (model, processor)."""

    def load() -> tuple[nn.Module, CLIPProcessor]:
        model, processor = load_clip(name_or_path)
        return TensorFeatures(model), processor

    return load


class ClipImageFeatures(nn.Module):
    """The CLIP image embedding as a FID feature extractor (torchmetrics ``feature=`` module)."""

    def __init__(self, model: CLIPModel, processor: CLIPProcessor):
        super().__init__()
        self.model, self.processor = model.eval(), processor
        self.num_features = model.config.projection_dim

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] (or float [-1, 1]) images -> [N, projection_dim] float embeddings."""
        return as_embedding(self.model.get_image_features(pixel_values=pixel_values(self.processor, images))).float()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> ClipImageFeatures:
        return cls(*load_clip(name_or_path))
