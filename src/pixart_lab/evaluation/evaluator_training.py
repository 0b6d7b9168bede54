"""Lightning modules that train the two evaluators on the corpus, and their held-out validation."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from transformers import CLIPModel, CLIPProcessor

from pixart_lab.evaluation.attribute_probe import CellProbe, probe_loss, scene_targets
from pixart_lab.evaluation.clip_model import as_embedding, pixel_values
from pixart_lab.training.lr_schedule import adamw_warmup_cosine


class _AdamWCosine(L.LightningModule):
    """AdamW with linear warm-up and cosine decay over ``max_steps``, for all parameters."""

    def __init__(self, lr: float, weight_decay: float, warmup_steps: int, max_steps: int):
        super().__init__()
        self.lr, self.weight_decay, self.warmup_steps, self.max_steps = lr, weight_decay, warmup_steps, max_steps

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.parameters(), self.lr, self.weight_decay, self.warmup_steps, self.max_steps)


class ContrastiveCLIP(_AdamWCosine):
    """CLIP's symmetric InfoNCE loss on (image, dense caption) batches."""

    def __init__(self, model: CLIPModel, **optim):
        super().__init__(**optim)
        self.model = model

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        pixels, input_ids, attention_mask = batch
        loss = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixels, return_loss=True).loss
        self.log("train/clip_loss", loss, prog_bar=True, batch_size=len(pixels))
        return loss


class AttributeProbeModule(_AdamWCosine):
    """Cross-entropy on per-cell shape / colour and the background."""

    def __init__(self, probe: CellProbe, **optim):
        super().__init__(**optim)
        self.probe = probe

    def training_step(self, batch: Sequence[torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, shapes, colours, backgrounds = batch
        loss = probe_loss(self.probe(images), shapes, colours, backgrounds)
        self.log("train/probe_loss", loss, prog_bar=True, batch_size=len(images))
        return loss


def clip_dataset(
    model: CLIPModel, processor: CLIPProcessor, images: torch.Tensor, captions: Sequence[str]
) -> torch.utils.data.TensorDataset:
    """Pixel values and padded token ids, computed once (the corpus fits in memory)."""
    tokens = processor.tokenizer(
        list(captions), padding="max_length", truncation=True,
        max_length=model.config.text_config.max_position_embeddings, return_tensors="pt",
    )  # fmt: skip
    return torch.utils.data.TensorDataset(pixel_values(processor, images), tokens.input_ids, tokens.attention_mask)


def probe_dataset(images: torch.Tensor, scenes: Sequence[dict]) -> torch.utils.data.TensorDataset:
    """uint8 images with their per-cell shape / colour targets and background."""
    targets = [scene_targets(s) for s in scenes]
    return torch.utils.data.TensorDataset(
        images,
        torch.stack([t[0] for t in targets]),
        torch.stack([t[1] for t in targets]),
        torch.tensor([t[2] for t in targets]),
    )


@torch.no_grad()
def clip_embeddings(
    model: CLIPModel, processor: CLIPProcessor, images: torch.Tensor, captions: Sequence[str], batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and caption embeddings."""
    model.eval()
    dataset = clip_dataset(model, processor, images, captions)
    image_emb, text_emb = [], []
    for pixels, ids, mask in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        image_emb.append(as_embedding(model.get_image_features(pixel_values=pixels)))
        text_emb.append(as_embedding(model.get_text_features(input_ids=ids, attention_mask=mask)))
    normalise = torch.nn.functional.normalize
    return normalise(torch.cat(image_emb), dim=-1), normalise(torch.cat(text_emb), dim=-1)


def retrieval_recall_at_1(image_emb: torch.Tensor, text_emb: torch.Tensor, pool: int) -> dict[str, float]:
    """R@1 of image->text and text->image retrieval among ``pool`` candidates (consecutive chunks)."""
    hits_i2t = hits_t2i = total = 0
    for start in range(0, len(image_emb) - pool + 1, pool):
        sims = image_emb[start : start + pool] @ text_emb[start : start + pool].T
        target = torch.arange(len(sims))
        hits_i2t += int((sims.argmax(1) == target).sum())
        hits_t2i += int((sims.argmax(0) == target).sum())
        total += len(sims)
    if total == 0:
        raise ValueError(f"need at least {pool} held-out pairs for R@1 among {pool}, got {len(image_emb)}")
    return {"image_to_text": hits_i2t / total, "text_to_image": hits_t2i / total}
