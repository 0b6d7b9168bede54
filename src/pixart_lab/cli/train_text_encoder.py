"""Stage `train_text_encoder`: build a T5 tokenizer from the captions and pre-train a tiny T5 encoder."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.models.text_encoder import FrozenTextEncoder, pretrain_t5
from pixart_lab.models.tokenizer import build_tokenizer
from pixart_lab.training.history import write_csv
from pixart_lab.utils.io import atomic_dir, write_json


def captions_of(records) -> list[str]:
    """Dense and (where present) sparse captions: the encoder must serve both caption ablations."""
    return [c for r in records for c in (r.dense_caption, r.sparse_caption) if c]


@entry_point("train_text_encoder")
def main(cfg: DictConfig) -> dict:
    if "pretrain" not in cfg.text_encoder:
        raise SystemExit(
            f"text_encoder={cfg.text_encoder.name} is pretrained ({cfg.text_encoder.pretrained}); "
            "train_text_encoder builds the embedded T5 only"
        )
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.text_encoder.num_threads)
    start = time.perf_counter()
    train = captions_of(instantiate(cfg.data.splits.train).records())
    heldout = captions_of(instantiate(cfg.data.splits.heldout).records())[: cfg.text_encoder.heldout_captions]

    tokenizer = build_tokenizer(train, model_max_length=cfg.text_encoder.max_length, **cfg.text_encoder.tokenizer)
    encoder, history = pretrain_t5(train, tokenizer, instantiate(cfg.text_encoder.pretrain), heldout=heldout)
    frozen = FrozenTextEncoder(tokenizer, encoder, max_length=cfg.text_encoder.max_length)
    with atomic_dir(cfg.outputs.model_dir) as tmp:
        frozen.save_pretrained(tmp)

    lengths = [len(ids) for ids in tokenizer(train[:2000])["input_ids"]]
    final = history[-1]
    metrics = {
        "heldout_span_loss": round(final["heldout_loss"], 4),
        "heldout_token_accuracy": round(final["heldout_token_accuracy"], 4),
        "final_train_loss": round(final["loss"], 4),
        "vocab_size": len(tokenizer),
        "tokens_per_caption_mean": round(sum(lengths) / len(lengths), 2),
        "tokens_per_caption_max": max(lengths),
        "encoder_parameters": sum(p.numel() for p in encoder.parameters()),
        "hidden_size": frozen.hidden_size,
        "steps": len(history),
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_csv(cfg.outputs.plot, history[:: max(1, len(history) // 200)] + [final], ["step", "loss", "lr"])
    write_json(cfg.outputs.metrics, metrics)
    print(f"text encoder: held-out span-corruption token accuracy {metrics['heldout_token_accuracy']}")
    return metrics


if __name__ == "__main__":
    main()
