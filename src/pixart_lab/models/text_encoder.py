"""The frozen T5 text encoder of PixArt-alpha, and the tiny T5 the embedded default pre-trains.

PixArt-alpha (Chen et al., 2023, Section 2.3) conditions its DiT on the token embeddings of a
frozen T5-XXL encoder (Raffel et al., 2020) at 120 tokens, padded, with the attention mask passed
to cross-attention. :class:`FrozenTextEncoder` is that component for any T5 encoder: the real
``google/t5-v1_1-xxl`` (or the ``text_encoder`` subfolder of a PixArt checkpoint) or the tiny T5
of :func:`pretrain_t5`. A randomly initialised frozen T5 passes word identity but binds colour to
shape or side only weakly, so the embedded default first trains a tiny encoder-decoder on the
corpus captions with T5's span-corruption objective (Raffel et al., 2020, Section 3.3.4), then
keeps its encoder and freezes it, as PixArt freezes T5.
"""

from __future__ import annotations

import copy
import importlib.util
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, T5Config, T5EncoderModel, T5ForConditionalGeneration

from pixart_lab.models.span_corruption import (
    LABEL_PAD_ID,
    MEAN_NOISE_SPAN_LENGTH,
    NOISE_DENSITY,
    collate_span_batch,
    span_corrupt,
)
from pixart_lab.models.tokenizer import sentinel_ids as tokenizer_sentinel_ids
from pixart_lab.utils.hub import download_hint, dtype_kwargs, load_pretrained, missing_weights_error

log = logging.getLogger(__name__)

TOKENIZER_DIR = "tokenizer"
ENCODER_DIR = "encoder"


@dataclass
class T5PretrainConfig:
    """Tiny T5 v1.1-style encoder-decoder and its span-corruption pre-training run."""

    d_model: int = 128
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    d_kv: int = 32
    d_ff: int = 256
    dropout: float = 0.0  # T5 v1.1 pre-trains without dropout
    steps: int = 1000  # ~2 min on one CPU thread at batch 64 (measured 8-10 steps/s)
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    # lr at the last step / cfg.lr, reached linearly after warm-up. Measured on 20k captions, 1000
    # steps: decaying to 0 gave held-out loss 0.560 / accuracy 0.561 against 0.589 / 0.540 constant.
    final_lr_fraction: float = 0.0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    noise_density: float = NOISE_DENSITY
    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
    seed: int = 0
    max_length: int = 120
    eval_batch_size: int = 256


def t5_config(tokenizer: PreTrainedTokenizerBase, cfg: T5PretrainConfig) -> T5Config:
    """T5 v1.1-style config (gated-GELU feed-forward) sized by ``cfg``, vocabulary = ``len(tokenizer)``.

    The LM head shares the input embedding with T5 1.0's d_model^-0.5 output scaling
    (``tie_word_embeddings=True``): transformers 5 always ties T5's LM head, and with v1.1's
    ``tie_word_embeddings=False`` it merely drops the scaling, so the tied, scaled form is the one
    that means the same under transformers 4 and 5. Only the encoder is kept.
    """
    return T5Config(
        vocab_size=len(tokenizer),
        d_model=cfg.d_model,
        d_kv=cfg.d_kv,
        d_ff=cfg.d_ff,
        num_layers=cfg.num_layers,
        num_decoder_layers=cfg.num_decoder_layers,
        num_heads=cfg.num_heads,
        dropout_rate=cfg.dropout,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def _tokenize(tokenizer: PreTrainedTokenizerBase, captions: Sequence[str], max_length: int) -> list[list[int]]:
    return tokenizer(list(captions), truncation=True, max_length=max_length)["input_ids"]


def _corrupt_batch(
    ids: Sequence[Sequence[int]], sentinels: Sequence[int], eos_id: int, pad_id: int,
    rng: np.random.Generator, cfg: T5PretrainConfig,
) -> dict[str, torch.Tensor]:
    pairs = [
        span_corrupt(x, sentinels, eos_id, rng, cfg.noise_density, cfg.mean_noise_span_length) for x in ids
    ]
    return collate_span_batch(pairs, pad_id=pad_id)


@torch.no_grad()
def evaluate_span_corruption(
    model: T5ForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    captions: Sequence[str],
    cfg: T5PretrainConfig,
    seed: int = 12345,
) -> dict[str, float]:
    """Teacher-forced span-corruption loss and token accuracy on ``captions``.

    The corruption is drawn from a fixed ``seed``, so numbers are comparable across runs.
    ``heldout_token_accuracy`` counts only the dropped caption tokens (argmax = truth), not the
    sentinels and EOS of the target, which are predictable from the format alone.
    """
    was_training = model.training
    model.eval()
    ids = _tokenize(tokenizer, captions, cfg.max_length)
    sentinels = tokenizer_sentinel_ids(tokenizer)
    special = torch.tensor(sorted(set(sentinels) | {tokenizer.eos_token_id}))
    rng = np.random.default_rng(seed)
    loss_sum, n_targets, n_correct, n_content = 0.0, 0, 0, 0
    for start in range(0, len(ids), cfg.eval_batch_size):
        batch = _corrupt_batch(
            ids[start : start + cfg.eval_batch_size], sentinels, tokenizer.eos_token_id,
            tokenizer.pad_token_id, rng, cfg,
        )
        logits = model(**batch).logits
        labels = batch["labels"]
        valid = labels != LABEL_PAD_ID
        loss_sum += nn.functional.cross_entropy(
            logits[valid].float(), labels[valid], reduction="sum"
        ).item()
        n_targets += int(valid.sum())
        content = valid & ~torch.isin(labels, special)
        n_correct += int((logits.argmax(-1) == labels)[content].sum())
        n_content += int(content.sum())
    model.train(was_training)
    return {
        "heldout_loss": loss_sum / max(n_targets, 1),
        "heldout_token_accuracy": n_correct / max(n_content, 1),
    }


def pretrain_t5(
    captions: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    cfg: T5PretrainConfig,
    heldout: Sequence[str] | None = None,
    progress: bool = True,
) -> tuple[T5EncoderModel, list[dict]]:
    """Pre-train a tiny T5 on ``captions`` with span corruption; return its encoder and the history.

    Each step draws ``cfg.batch_size`` captions (epoch-wise permutations), corrupts each with a
    fresh mask (T5 Section 3.3.4: 15% of tokens, mean span 3) and minimises the decoder's
    cross-entropy on the targets; AdamW with linear warm-up to ``cfg.lr``, then linear decay to
    ``cfg.final_lr_fraction * cfg.lr``, gradient clipping at ``cfg.grad_clip``. Deterministic on
    CPU for a given seed and thread count; the caller's global torch RNG state is left untouched.

    Returns a ``T5EncoderModel`` holding the trained encoder and shared embedding (eval mode) and
    one ``{"step", "loss", "lr"}`` record per step; the last record also carries
    ``heldout_loss`` and ``heldout_token_accuracy`` when ``heldout`` is given.
    """
    if not captions:
        raise ValueError("pretrain_t5: no captions")
    config = t5_config(tokenizer, cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = T5ForConditionalGeneration(config)
    model.train()

    ids = _tokenize(tokenizer, captions, cfg.max_length)
    sentinels = tokenizer_sentinel_ids(tokenizer)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    rng = np.random.default_rng(cfg.seed)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(int(cfg.warmup_steps), 0)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        # Linear from 1 after warm-up to cfg.final_lr_fraction at the last step.
        progress = (step - warmup) / max(cfg.steps - warmup - 1, 1)
        return 1.0 + (cfg.final_lr_fraction - 1.0) * min(progress, 1.0)

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    history: list[dict] = []
    order = np.empty(0, dtype=np.int64)
    bar = tqdm(range(cfg.steps), desc="T5 span corruption", disable=not progress, leave=False)
    for step in bar:
        if len(order) < cfg.batch_size:
            order = np.concatenate([order, rng.permutation(len(ids))])
        batch_idx, order = order[: cfg.batch_size], order[cfg.batch_size :]
        batch = _corrupt_batch([ids[i] for i in batch_idx], sentinels, eos_id, pad_id, rng, cfg)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(
                f"pretrain_t5: loss became {value} at step {step + 1}; lower cfg.lr ({cfg.lr})"
            )
        history.append({"step": step + 1, "loss": value, "lr": lr})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{value:.3f}")
    bar.close()

    if heldout and history:
        history[-1].update(evaluate_span_corruption(model, tokenizer, heldout, cfg))
    return extract_encoder(model), history


def extract_encoder(model: T5ForConditionalGeneration) -> T5EncoderModel:
    """A ``T5EncoderModel`` with the encoder stack and shared embedding of ``model`` (eval mode)."""
    encoder = T5EncoderModel(copy.deepcopy(model.config))  # T5EncoderModel edits the config it gets
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("shared.", "encoder."))}
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()


T5_XXL = "google/t5-v1_1-xxl"  # PixArt-alpha's text encoder (its encoder half)
# What a local text-encoder folder holds; said in every "missing text encoder" error.
LAYOUT_HINT = (
    f"A local folder holds '{TOKENIZER_DIR}/' and '{ENCODER_DIR}/' (as the train_text_encoder stage writes them), "
    "'tokenizer/' and 'text_encoder/' (a PixArt diffusers pipeline), or a tokenizer beside a T5 config.json "
    "and weights."
)


def quantization_kwargs(load_in_8bit: bool) -> dict:
    """``from_pretrained`` arguments for 8-bit weights (bitsandbytes on a CUDA device), else none.

    T5-XXL's encoder is 4.7B parameters: 19 GB in float32, 9.5 GB in bfloat16, ~5 GB in 8 bits. 8-bit
    needs the ``bitsandbytes`` package and a CUDA device; without either the encoder loads unquantised
    and a warning says why.
    """
    if not load_in_8bit:
        return {}
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if not (has_bnb and torch.cuda.is_available()):
        log.warning(
            "text encoder: 8-bit loading needs bitsandbytes and a CUDA device (bitsandbytes %s, CUDA %s); "
            "loading unquantised instead",
            "installed" if has_bnb else "not installed", "available" if torch.cuda.is_available() else "not available",
        )
        return {}
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(load_in_8bit=True), "device_map": {"": torch.cuda.current_device()}}


class FrozenTextEncoder(nn.Module):
    """Tokenizer + frozen T5 encoder: captions in, PixArt's ``(embeddings, mask)`` out.

    Parameters never require gradients and the module stays in eval mode even when a parent calls
    ``.train()``: T5-XXL checkpoints ship with dropout 0.1, and PixArt uses T5 as a fixed feature
    extractor (its features are even cached to disk), so a training-mode T5 would silently
    change the conditioning.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, encoder: T5EncoderModel, max_length: int = 120):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.max_length = int(max_length)
        self.encoder.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        return super().train(False)

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def truncated(self, captions: Sequence[str]) -> list[bool]:
        """Which captions are longer than ``max_length`` tokens (and so are cut by :meth:`encode`)."""
        # One extra token tells a caption that fits exactly from one that was cut.
        probe = self.tokenizer(list(captions), truncation=True, max_length=self.max_length + 1)["input_ids"]
        return [len(ids) > self.max_length for ids in probe]

    @torch.no_grad()
    def encode(self, captions: Sequence[str], pad_to_max_length: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(last_hidden_state [B, max_length, D] float32, attention_mask [B, max_length] long)``.

        Captions are padded to ``max_length`` and truncated to it (keeping ``</s>`` last), as PixArt
        tokenises for T5; a warning gives the number of truncated captions. ``pad_to_max_length=False``
        pads only to the longest caption: the valid positions are the same, at a fraction of the cost.
        """
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        n_truncated = sum(self.truncated(captions))
        if n_truncated:
            log.warning(
                "%d of %d captions are longer than %d tokens and were truncated",
                n_truncated, len(captions), self.max_length,
            )
        batch = self.tokenizer(
            captions,
            padding="max_length" if pad_to_max_length else "longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden.float(), attention_mask.long()

    def forward(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(captions)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``directory/tokenizer`` and ``directory/encoder`` (transformers formats)."""
        directory = Path(directory)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # The fast backend keeps the padding/truncation of its last call and would write it into
            # tokenizer.json; every call sets its own, so save the neutral state for stable bytes.
            backend.no_padding()
            backend.no_truncation()
        self.tokenizer.save_pretrained(directory / TOKENIZER_DIR)
        self.encoder.save_pretrained(directory / ENCODER_DIR)
        return directory

    @classmethod
    def from_config(cls, cfg: Mapping) -> FrozenTextEncoder:
        """From a ``conf/text_encoder`` node: ``pretrained``, ``max_length``, optional ``subfolder``,
        ``dtype`` and ``load_in_8bit``."""
        return cls.from_pretrained(
            cfg["pretrained"], max_length=cfg["max_length"], subfolder=cfg.get("subfolder"),
            dtype=cfg.get("dtype"), load_in_8bit=bool(cfg.get("load_in_8bit", False)),
        )  # fmt: skip

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str | os.PathLike,
        max_length: int = 120,
        dtype: torch.dtype | str | None = None,
        local_files_only: bool | None = None,
        subfolder: str | None = None,
        tokenizer_subfolder: str | None = None,
        load_in_8bit: bool = False,
    ) -> FrozenTextEncoder:
        """Load from a local directory or a Hugging Face name, frozen.

        Local directory: the tokenizer from ``{path}/tokenizer`` if present else ``{path}``, the
        encoder from ``{path}/{subfolder}`` if given, else ``{path}/encoder``, ``{path}/text_encoder``
        (a diffusers PixArt pipeline folder) or ``{path}``. Hub name (``google/t5-v1_1-xxl``, or
        ``PixArt-alpha/PixArt-XL-2-1024-MS`` with ``subfolder="text_encoder"``, whose tokenizer then
        defaults to the ``tokenizer`` subfolder), read from the local cache only when
        ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` is set or ``local_files_only``.
        ``load_in_8bit``: see :func:`quantization_kwargs`. Anything missing raises
        ``MissingWeightsError`` naming what was tried and how to get the weights.
        """
        from transformers import AutoTokenizer

        name = os.fspath(path_or_name)
        path = Path(name).expanduser()
        fix = download_hint(name, "text_encoder.pretrained", T5_XXL) + " " + LAYOUT_HINT
        model_kwargs = {**dtype_kwargs(dtype), **quantization_kwargs(load_in_8bit)}
        if path.is_dir():
            tok_dir = path / (tokenizer_subfolder or (TOKENIZER_DIR if (path / TOKENIZER_DIR).is_dir() else ""))
            enc_dir = path / subfolder if subfolder else next(
                (path / d for d in (ENCODER_DIR, "text_encoder") if (path / d / "config.json").is_file()), path
            )
            missing = []
            if not any((tok_dir / f).is_file() for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
                missing.append(f"a tokenizer (tokenizer.json or spiece.model) in {tok_dir}")
            if not (enc_dir / "config.json").is_file():
                missing.append(f"a T5 config.json in {enc_dir}")
            if missing:
                raise missing_weights_error("Text encoder", name, LAYOUT_HINT, reason="the folder lacks " + " and ".join(missing))
            sources = (tok_dir, "", enc_dir, "")
        else:
            sources = (name, tokenizer_subfolder or (TOKENIZER_DIR if subfolder else ""), name, subfolder or "")

        def load(local_only: bool) -> tuple[PreTrainedTokenizerBase, T5EncoderModel]:
            local_only = local_only if local_files_only is None else bool(local_files_only)
            tok_source, tok_sub, enc_source, enc_sub = sources
            tokenizer = AutoTokenizer.from_pretrained(tok_source, subfolder=tok_sub, local_files_only=local_only)
            encoder = T5EncoderModel.from_pretrained(enc_source, subfolder=enc_sub, local_files_only=local_only, **model_kwargs)
            return tokenizer, encoder

        component = f"Text encoder (subfolder {subfolder})" if subfolder else "Text encoder"
        tokenizer, encoder = load_pretrained(component, name, fix, load)
        return cls(tokenizer, encoder, max_length=max_length)
