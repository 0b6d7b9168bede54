"""Evaluators trained briefly on a small generated corpus: enough for each metric to tell good from bad."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from pixart_lab.data.corpus import CorpusConfig, generate_corpus
from pixart_lab.data.readers import PixArtInfoReader
from pixart_lab.data.transforms import load_images


def _fit(module, dataset, steps: int, batch_size: int) -> None:
    trainer = L.Trainer(
        max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(module, DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True))


@pytest.fixture(scope="session")
def evaluator_corpus(tmp_path_factory):
    """1200 training and 400 held-out 64 px scenes, decoded: (train images, records, held-out images, records)."""
    root = tmp_path_factory.mktemp("evaluator_corpus")
    generate_corpus(root, CorpusConfig(seed=3, n_train=1200, n_heldout=400, n_aesthetic=8, workers=1), progress=False)
    train = load_images(PixArtInfoReader(root / "train" / "data_info.json").records(), 64, 64, progress=False)
    heldout = load_images(PixArtInfoReader(root / "heldout" / "data_info.json").records(), 64, 64, progress=False)
    return (*train, *heldout)


@pytest.fixture(scope="session")
def trained_clip(evaluator_corpus):
    """A 2-layer CLIP after 150 contrastive steps on the training scenes."""
    from pixart_lab.evaluation.clip_model import build_clip
    from pixart_lab.evaluation.evaluator_training import ContrastiveCLIP, clip_dataset
    from pixart_lab.models.tokenizer import build_tokenizer

    images, records, _, _ = evaluator_corpus
    tokenizer = build_tokenizer([r.dense_caption for r in records])
    torch.manual_seed(0)
    model, processor = build_clip(tokenizer, width=64, layers=2, heads=2, projection_dim=64)
    dataset = clip_dataset(model, processor, images, [r.dense_caption for r in records])
    _fit(ContrastiveCLIP(model, lr=2e-3, weight_decay=0.1, warmup_steps=20, max_steps=150), dataset, 150, 64)
    return model.eval(), processor
