"""Convert PixArt-alpha weights between the official ``.pth`` layout and a diffusers transformer folder."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.models.official_checkpoint import CAPTION_TOKENS, ORIGINAL_SUFFIXES
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.training.checkpoints import (
    ORIGINAL_BUFFERS_FILE,
    export_original_checkpoint,
    import_original_checkpoint,
    resolve_init,
)


def convert(cfg: DictConfig) -> Path:
    """``cfg.source`` (a .pth, a run, a transformer or pipeline folder) converted to the other layout at ``cfg.out``."""
    source = resolve_init(cfg.source, cfg.paths.checkpoints_dir)
    if source.suffix in ORIGINAL_SUFFIXES:
        return import_original_checkpoint(source, cfg.out, cfg.ema, cfg.attention_head_dim)
    null_caption = None
    if not (source / ORIGINAL_BUFFERS_FILE).is_file():  # trained here: the null caption is T5("")
        encoder = FrozenTextEncoder.from_config({**cfg.text_encoder, "max_length": CAPTION_TOKENS})
        null_caption = encoder.encode([""])[0][0]
    return export_original_checkpoint(source, cfg.out, null_caption)


@entry_point("convert_checkpoint")
def main(cfg: DictConfig) -> str:
    out = convert(cfg)
    print(f"convert_checkpoint: {cfg.source} -> {out}")
    return str(out)


if __name__ == "__main__":
    main()
