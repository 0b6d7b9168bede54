"""Stage `extract_features`: cache VAE latents and T5 caption embeddings for every split."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.features import SplitSpec, cache_summary, extract_split
from pixart_lab.data.images import ImageLimits
from pixart_lab.data.records import SkipReport
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.utils.device import pick_device
from pixart_lab.utils.io import write_json


@entry_point("extract_features")
def main(cfg: DictConfig) -> dict:
    torch.set_num_threads(cfg.features.num_threads)
    start = time.perf_counter()
    feats = cfg.features
    device = pick_device(feats.device)
    limits = ImageLimits(cfg.images.max_pixels, cfg.images.min_side, tuple(cfg.images.background))
    # Readers first: a missing data folder is reported before any model is loaded.
    readers = {name: instantiate(cfg.data.splits[name], limits=limits) for name in feats.splits if name in cfg.data.splits}
    vae = load_vae(cfg.vae.pretrained, cfg.vae.get("subfolder"), cfg.vae.get("scaling_factor")).eval()
    vae = vae.to(device, memory_format=torch.channels_last)  # measured 1.2x faster convolutions on CPU
    text_encoder = FrozenTextEncoder.from_config(cfg.text_encoder)
    if not getattr(text_encoder.encoder, "is_loaded_in_8bit", False):  # bitsandbytes placed it already
        text_encoder.to(device)
    report = SkipReport(source="extract_features")
    splits = {}
    for name, reader in readers.items():
        spec = SplitSpec(name=name, **OmegaConf.to_container(feats.splits[name], resolve=True))
        splits[name] = extract_split(
            reader.records(), spec, Path(feats.out_dir) / name, vae, text_encoder, report,
            shard_size=feats.shard_size, batch_size=feats.batch_size, emb_dtype=getattr(torch, feats.emb_dtype),
            limits=limits,
        )  # fmt: skip
        report.merge(reader.report)
    report.kept = sum(s["count"] for s in splits.values())  # readers count what they pass on; some fail to decode
    manifest = {
        "vae": {"source": str(cfg.vae.pretrained), "scaling_factor": float(vae.config.scaling_factor),
                "latent_channels": int(vae.config.latent_channels)},
        "text_encoder": {"source": str(cfg.text_encoder.pretrained), "max_length": cfg.text_encoder.max_length,
                         "hidden_size": text_encoder.hidden_size},
        "splits": {name: {"count": s["count"]} for name, s in splits.items()},
    }  # fmt: skip
    write_json(Path(feats.out_dir) / "manifest.json", manifest)
    report.write(Path(feats.out_dir) / "report.json")
    metrics = cache_summary(splits, report, time.perf_counter() - start)
    write_json(cfg.outputs.metrics, metrics)
    print(f"features: {metrics['images']} images cached, {metrics['skipped']} skipped, {metrics['converted']} "
          f"conversions (see {Path(feats.out_dir) / 'report.json'}), {metrics['images_per_second']} images/s")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
