"""Shared fixtures: a tiny generated corpus and tiny VAE / text encoder built on the spot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    """24 train, 12 held-out and 10 multi-aspect images of the embedded corpus."""
    from pixart_lab.data.corpus import CorpusConfig, generate_corpus

    root = tmp_path_factory.mktemp("tiny_corpus")
    generate_corpus(root, CorpusConfig(n_train=24, n_heldout=12, n_aesthetic=10, workers=1), progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_vae():
    from pixart_lab.models.vae import build_vae

    torch.manual_seed(0)
    return build_vae(block_out_channels=(8, 16, 16), latent_channels=4, norm_num_groups=4, sample_size=64).eval()


@pytest.fixture(scope="session")
def tiny_text_encoder(tiny_corpus):
    """Tokenizer built from the tiny corpus' captions, randomly initialised T5 encoder (no pre-training)."""
    from transformers import T5EncoderModel

    from pixart_lab.data.readers import PixArtInfoReader
    from pixart_lab.models.text_encoder import FrozenTextEncoder, T5PretrainConfig, t5_config
    from pixart_lab.models.tokenizer import build_tokenizer

    records = PixArtInfoReader(tiny_corpus / "train" / "data_info.json").records()
    tokenizer = build_tokenizer([c for r in records for c in (r.dense_caption, r.sparse_caption)])
    torch.manual_seed(0)
    config = t5_config(tokenizer, T5PretrainConfig(d_model=32, num_layers=1, num_heads=2, d_kv=16, d_ff=64))
    return FrozenTextEncoder(tokenizer, T5EncoderModel(config), max_length=120)


@pytest.fixture(scope="session")
def tiny_features(tiny_corpus, tiny_vae, tiny_text_encoder, tmp_path_factory) -> Path:
    """The tiny corpus' feature cache: 64 px train/held-out, 128 px multi-aspect aesthetic split."""
    from pixart_lab.data.features import SplitSpec, extract_split
    from pixart_lab.data.readers import PixArtInfoReader
    from pixart_lab.data.records import SkipReport
    from pixart_lab.utils.io import write_json

    root = tmp_path_factory.mktemp("tiny_features")
    specs = [SplitSpec("train", 64), SplitSpec("heldout", 64), SplitSpec("aesthetic", 128, (0.5, 0.75, 1.0, 1.33, 2.0))]
    for spec in specs:
        records = PixArtInfoReader(tiny_corpus / spec.name / "data_info.json", key_prefix=f"{spec.name}/").records()
        extract_split(records, spec, root / spec.name, tiny_vae, tiny_text_encoder, SkipReport(),
                      shard_size=8, batch_size=4, progress=False)  # fmt: skip
    write_json(root / "manifest.json", {"vae": {"scaling_factor": 2.0}})
    return root


@pytest.fixture(scope="session")
def tiny_control_features(tiny_corpus, tiny_vae, tmp_path_factory) -> Path:
    """Canny control latents of the tiny corpus' 64 px splits, keyed like ``tiny_features``."""
    from functools import partial

    from pixart_lab.data.control_features import encode_control_shard
    from pixart_lab.data.edges import CannyEdges
    from pixart_lab.data.features import SplitSpec, cache_split
    from pixart_lab.data.readers import PixArtInfoReader
    from pixart_lab.data.records import SkipReport
    from pixart_lab.utils.io import write_json

    root = tmp_path_factory.mktemp("tiny_control")
    encode = partial(encode_control_shard, detector=CannyEdges(), vae=tiny_vae, batch_size=8)
    for split in ("train", "heldout"):
        records = PixArtInfoReader(tiny_corpus / split / "data_info.json", key_prefix=f"{split}/").records()
        cache_split(records, SplitSpec(split, 64), root / split, encode, SkipReport(), shard_size=8, progress=False)
    write_json(root / "manifest.json", {"vae": {"scaling_factor": 2.0}, "control": {"name": "canny"}})
    return root


@pytest.fixture(scope="session")
def saved_tiny_models(tiny_vae, tiny_text_encoder, tmp_path_factory) -> Path:
    """The tiny VAE and text encoder saved as the stages load them: ``vae/`` and ``text_encoder/``."""
    root = tmp_path_factory.mktemp("tiny_models")
    tiny_vae.save_pretrained(root / "vae")
    tiny_text_encoder.save_pretrained(root / "text_encoder")
    return root
