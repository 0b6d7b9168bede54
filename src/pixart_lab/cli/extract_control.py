"""Stage `extract_control`: edge maps of the corpus images and their VAE latents (the ControlNet's control)."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.control_features import encode_control_latents, encode_control_shard
from pixart_lab.data.edges import binary_edges, control_image
from pixart_lab.data.features import SplitSpec, cache_split, cache_summary
from pixart_lab.data.records import SkipReport
from pixart_lab.data.transforms import load_images, uint8_to_model_range
from pixart_lab.evaluation.control_fidelity import edge_agreement
from pixart_lab.models.vae import load_vae
from pixart_lab.training.images import save_grid
from pixart_lab.utils.io import write_json


@torch.inference_mode()
def latent_round_trip(vae, edges: torch.Tensor, tolerance: int) -> tuple[dict[str, float], torch.Tensor]:
    """How much of the edge maps survives the VAE: decoded control images re-binarised against the edges."""
    decoded = vae.decode(encode_control_latents(vae, edges)).sample.clamp(-1, 1)
    decoded_edges = decoded.mean(dim=1) > 0  # white-on-black: above mid-grey is an edge
    scores = edge_agreement(decoded_edges, binary_edges(edges), tolerance)
    return {name: round(float(v.mean()), 4) for name, v in scores.items()}, decoded


@entry_point("extract_control")
def main(cfg: DictConfig) -> dict:
    feats = cfg.control_features
    torch.set_num_threads(feats.num_threads)
    start = time.perf_counter()
    vae = load_vae(cfg.vae.pretrained, cfg.vae.get("subfolder"), cfg.vae.get("scaling_factor")).eval()
    vae = vae.to(memory_format=torch.channels_last)
    detector = instantiate(cfg.control.detector)
    report = SkipReport(source="extract_control")
    encode = partial(encode_control_shard, detector=detector, vae=vae, batch_size=feats.batch_size)
    splits = {}
    for name, split_cfg in feats.splits.items():
        reader = instantiate(cfg.data.splits[name])
        spec = SplitSpec(name=name, **OmegaConf.to_container(split_cfg, resolve=True))
        splits[name] = cache_split(reader.records(), spec, Path(feats.out_dir) / name, encode, report, feats.shard_size, desc="control")
        report.merge(reader.report)
    manifest = {
        "control": OmegaConf.to_container(cfg.control, resolve=True),
        "vae": {"source": str(cfg.vae.pretrained), "scaling_factor": float(vae.config.scaling_factor)},
        "splits": {name: {"count": s["count"]} for name, s in splits.items()},
    }
    write_json(Path(feats.out_dir) / "manifest.json", manifest)
    report.write(Path(feats.out_dir) / "report.json")

    records = instantiate(cfg.data.splits.heldout).records()[: feats.check_images]
    images, _ = load_images(records, cfg.data.image_size, cfg.data.image_size, progress=False)
    edges = detector(images)
    round_trip, decoded = latent_round_trip(vae, edges, feats.tolerance)
    k = cfg.preview_images  # rows: image | edge map | the VAE's reconstruction of the control image
    save_grid(torch.cat([uint8_to_model_range(images[:k]), control_image(edges[:k]), decoded[:k]]), cfg.outputs.preview, k)

    metrics = {
        "detector": cfg.control.name,
        **cache_summary(splits, report, time.perf_counter() - start),
        "heldout_edge_density": round(float(binary_edges(edges).float().mean()), 4),
        "latent_round_trip": {**round_trip, "images": len(edges), "tolerance": feats.tolerance},
    }
    write_json(cfg.outputs.metrics, metrics)
    print(f"control features: {metrics['images']} images, {metrics['skipped']} skipped; "
          f"latent round trip F1 {round_trip['f1']}")  # fmt: skip
    return metrics


if __name__ == "__main__":
    main()
