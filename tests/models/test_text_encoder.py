"""Span-corruption pre-training teaches the tiny T5; the frozen wrapper encodes like PixArt's T5."""

from __future__ import annotations

import importlib.util
import logging
import random

import pytest
import torch
from transformers import T5EncoderModel

from pixart_lab.models.text_encoder import FrozenTextEncoder, T5PretrainConfig, pretrain_t5, quantization_kwargs
from pixart_lab.models.tokenizer import build_tokenizer
from pixart_lab.utils.hub import MissingWeightsError

TINY = dict(d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=1, num_decoder_layers=1)


def corpus_captions(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    colours, shapes = ["red", "green", "blue", "yellow", "purple"], ["circle", "square", "triangle", "star"]

    def obj() -> str:
        return f"{r.choice(['small', 'large'])} {r.choice(colours)} {r.choice(shapes)}"

    out = []
    for _ in range(n):
        if r.random() < 0.25:
            out.append(f"{r.choice(colours)} {r.choice(shapes)}")
        else:
            rel = r.choice(["left of", "right of", "above", "below"])
            out.append(f"a {r.choice(['sharp', 'noisy'])} image of a {obj()} {rel} a {obj()} on a grey background")
    return out


@pytest.fixture(scope="module")
def captions() -> list[str]:
    return corpus_captions(400)


@pytest.fixture(scope="module")
def tokenizer(captions):
    return build_tokenizer(captions)


@pytest.fixture(scope="module")
def cfg() -> T5PretrainConfig:
    return T5PretrainConfig(**TINY, steps=60, batch_size=16, lr=3e-3, warmup_steps=10, seed=0)


@pytest.fixture(scope="module")
def pretrained(captions, tokenizer, cfg):
    torch.set_num_threads(1)
    return pretrain_t5(captions[:300], tokenizer, cfg, heldout=captions[300:], progress=False)


@pytest.fixture(scope="module")
def frozen(tokenizer, pretrained) -> FrozenTextEncoder:
    return FrozenTextEncoder(tokenizer, pretrained[0], max_length=120)


def test_pretraining_lowers_the_span_corruption_loss(pretrained, cfg):
    encoder, history = pretrained
    assert isinstance(encoder, T5EncoderModel)
    assert [h["step"] for h in history] == list(range(1, cfg.steps + 1))
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-10:]) / 10
    # Measured: 5.8 -> 2.3 (ratio 0.40) in 60 steps on 300 captions; uniform guessing over 150 ids is ln 150 = 5.0.
    assert last < 0.6 * first
    assert history[-1]["heldout_loss"] < 0.6 * first
    # Measured 0.22 on dropped caption words; a model that has learned nothing stays near 1/150.
    assert history[-1]["heldout_token_accuracy"] > 0.1
    assert history[0]["lr"] == pytest.approx(cfg.lr / cfg.warmup_steps)


def test_pretraining_is_deterministic(captions, tokenizer, cfg, pretrained):
    short = T5PretrainConfig(**{**cfg.__dict__, "steps": 8})
    a, ha = pretrain_t5(captions[:300], tokenizer, short, progress=False)
    b, hb = pretrain_t5(captions[:300], tokenizer, short, progress=False)
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    assert [h["loss"] for h in ha] == [h["loss"] for h in pretrained[1][:8]]
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_encoder_keeps_the_trained_shared_embedding(pretrained, tokenizer, cfg):
    encoder, _ = pretrained
    assert encoder.shared.weight.shape == (len(tokenizer), cfg.d_model)
    assert encoder.encoder.embed_tokens.weight.data_ptr() == encoder.shared.weight.data_ptr()
    torch.manual_seed(cfg.seed)
    fresh = T5EncoderModel(encoder.config)
    assert not torch.allclose(fresh.shared.weight, encoder.shared.weight)


def test_frozen_encoder_is_frozen_and_stays_in_eval(frozen):
    assert all(not p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not frozen.encoder.training
    assert frozen.hidden_size == 32


def test_encode_shapes_dtypes_and_mask(frozen, tokenizer):
    captions = ["red circle", "a sharp image of a large red circle left of a small blue star on a grey background", ""]
    emb, mask = frozen.encode(captions)
    assert emb.shape == (3, 120, 32) and emb.dtype == torch.float32
    assert mask.shape == (3, 120) and mask.dtype == torch.long
    assert mask.sum(1).tolist() == [len(tokenizer(c).input_ids) for c in captions]
    assert mask.sum(1).tolist()[2] == 1  # the null caption of classifier-free guidance is just </s>


def test_valid_positions_do_not_depend_on_padding_length(frozen):
    captions = ["red circle", "a noisy image of a small green square above a large yellow triangle on a grey background"]
    long_emb, long_mask = frozen.encode(captions)
    short = FrozenTextEncoder(frozen.tokenizer, frozen.encoder, max_length=24)
    short_emb, short_mask = short.encode(captions)
    for row in range(2):
        n = int(short_mask[row].sum())
        assert int(long_mask[row].sum()) == n
        torch.testing.assert_close(short_emb[row, :n], long_emb[row, :n], atol=1e-5, rtol=1e-5)


def test_truncation_is_counted_in_a_warning(frozen, caplog):
    with caplog.at_level(logging.WARNING, logger="pixart_lab.models.text_encoder"):
        _, mask = frozen.encode([" ".join(["red circle"] * 100), "red circle", " ".join(["blue"] * 119)])
    assert mask.sum(1).tolist() == [120, 3, 120]
    assert "1 of 3 captions are longer than 120 tokens" in caplog.text


def test_save_load_round_trip_gives_identical_embeddings(frozen, tmp_path):
    frozen.save_pretrained(tmp_path / "te")
    assert (tmp_path / "te" / "tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "te" / "encoder" / "config.json").is_file()
    loaded = FrozenTextEncoder.from_pretrained(str(tmp_path / "te"), local_files_only=True)
    captions = ["red circle", "a sharp image of a small purple star below a large red square on a grey background"]
    a, ma = frozen.encode(captions)
    b, mb = loaded.encode(captions)
    assert torch.equal(ma, mb) and torch.equal(a, b)
    assert all(not p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_loads_a_diffusers_pipeline_layout_and_casts_dtype(frozen, tmp_path):
    # PixArt pipeline folders hold tokenizer/ and text_encoder/.
    frozen.tokenizer.save_pretrained(tmp_path / "pipe" / "tokenizer")
    frozen.encoder.save_pretrained(tmp_path / "pipe" / "text_encoder")
    loaded = FrozenTextEncoder.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    assert next(loaded.encoder.parameters()).dtype == torch.bfloat16
    emb, _ = loaded.encode(["red circle"])
    assert emb.dtype == torch.float32
    explicit = FrozenTextEncoder.from_pretrained(tmp_path / "pipe", subfolder="text_encoder")
    torch.testing.assert_close(explicit.encode(["red circle"])[0], frozen.encode(["red circle"])[0])


LAYOUT = (
    "A local folder holds 'tokenizer/' and 'encoder/' (as the train_text_encoder stage writes them), 'tokenizer/' "
    "and 'text_encoder/' (a PixArt diffusers pipeline), or a tokenizer beside a T5 config.json and weights."
)


def test_missing_weights_raise_one_clear_error_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        FrozenTextEncoder.from_pretrained("pixart-lab-missing/t5-nowhere")
    assert str(err.value) == (
        "Text encoder 'pixart-lab-missing/t5-nowhere' is not available: not in the local Hugging Face cache, and "
        "HF_HUB_OFFLINE=1 forbids downloading it. Download it once where there is network access "
        "(`hf download pixart-lab-missing/t5-nowhere`) and set text_encoder.pretrained to the downloaded folder. " + LAYOUT
    )
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(MissingWeightsError) as err:
        FrozenTextEncoder.from_pretrained(str(missing))
    assert str(err.value) == (
        f"Text encoder '{missing}' is not available: no such file or folder. Check text_encoder.pretrained, or "
        "download the weights once where there is network access (`hf download google/t5-v1_1-xxl`) and set "
        "text_encoder.pretrained to the downloaded folder. " + LAYOUT
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError) as err:
        FrozenTextEncoder.from_pretrained(str(tmp_path / "empty"))
    assert str(err.value) == (
        f"Text encoder '{tmp_path / 'empty'}' is not available: the folder lacks a tokenizer (tokenizer.json or "
        f"spiece.model) in {tmp_path / 'empty'} and a T5 config.json in {tmp_path / 'empty'}. " + LAYOUT
    )


def test_eight_bit_falls_back_with_a_warning_without_bitsandbytes_or_cuda(monkeypatch, caplog):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING):
        assert quantization_kwargs(True) == {}
    assert "8-bit loading needs bitsandbytes and a CUDA device (bitsandbytes not installed" in caplog.text
    assert quantization_kwargs(False) == {}


def test_eight_bit_uses_bitsandbytes_when_it_and_cuda_are_there(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    kwargs = quantization_kwargs(True)
    assert kwargs["quantization_config"].load_in_8bit and kwargs["device_map"] == {"": 0}


def test_from_config_reads_the_text_encoder_group(frozen, tmp_path):
    frozen.save_pretrained(tmp_path / "te")
    cfg = {"pretrained": str(tmp_path / "te"), "max_length": 32, "subfolder": None, "dtype": "bfloat16", "load_in_8bit": False}
    loaded = FrozenTextEncoder.from_config(cfg)
    assert loaded.max_length == 32 and next(loaded.encoder.parameters()).dtype == torch.bfloat16
