"""Stage `caption`: dense captions for a user's images by a vision-language model, before extract_features."""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.captioning import caption_folder, write_data_info
from pixart_lab.utils.io import write_json


def caption(cfg: DictConfig) -> dict:
    """Caption ``cfg.images_dir`` with ``cfg.captioner``; write the counts to ``cfg.outputs.metrics``."""
    summary = caption_folder(cfg.images_dir, instantiate(cfg.captioner), cfg.batch_size, cfg.overwrite)
    summary["model"] = str(cfg.captioner.model)
    if cfg.data_info:
        summary["data_info"] = [str(p) for p in write_data_info(cfg.images_dir)]
    write_json(cfg.outputs.metrics, summary)
    return summary


@entry_point("caption")
def main(cfg: DictConfig) -> dict:
    summary = caption(cfg)
    print(f"caption: {summary['captioned']} captions written, {summary['already_captioned']} images already "
          f"captioned, {summary['skipped']} skipped, of {summary['images']} images in {cfg.images_dir}")  # fmt: skip
    return summary


if __name__ == "__main__":
    main()
