"""Stage `train_vae`: train the embedded AutoencoderKL on corpus images and save it for diffusers."""

from __future__ import annotations

import time

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from pixart_lab.cli.entry import entry_point
from pixart_lab.data.transforms import load_images, uint8_to_model_range
from pixart_lab.models.vae import centre_latents, measure_scaling_factor, psnr, reconstruct
from pixart_lab.training.history import MetricHistory
from pixart_lab.training.images import save_grid
from pixart_lab.training.wiring import build_callbacks, build_loggers
from pixart_lab.training.vae_module import VAEModule
from pixart_lab.utils.io import atomic_dir, write_json


def clean_only(records, quality):
    """Held-out records rendered cleanly (scene-graph quality); all records for data without one."""
    if quality is None:
        return records
    return [r for r in records if (r.scene or {}).get("quality") == quality]


@entry_point("train_vae")
def main(cfg: DictConfig) -> dict:
    if "train" not in cfg.vae:
        raise SystemExit(f"vae={cfg.vae.name} is pretrained ({cfg.vae.pretrained}); train_vae trains the embedded VAE only")
    seed_everything(cfg.seed, workers=True)
    start = time.perf_counter()
    size, train_cfg = cfg.data.image_size, cfg.vae.train
    train_images, _ = load_images(instantiate(cfg.data.splits.train).records(), size, size)
    heldout = clean_only(instantiate(cfg.data.splits.heldout).records(), cfg.data.clean_quality)
    val_images, _ = load_images(heldout[: train_cfg.val_images], size, size)

    vae = instantiate(cfg.vae.model)
    module = VAEModule(
        vae, train_cfg.lr, train_cfg.kl_weight, train_cfg.crop_size, train_cfg.warmup_steps, train_cfg.max_steps,
        train_cfg.l1_weight,
    )
    history = MetricHistory(cfg.outputs.plot, keys=["train/loss", "train/mse"], every_n_steps=10)
    callbacks = build_callbacks(cfg.callbacks, history)
    trainer = instantiate(cfg.trainer, logger=build_loggers(cfg.logger), callbacks=callbacks)
    trainer.fit(
        module,
        DataLoader(TensorDataset(train_images), batch_size=train_cfg.batch_size, shuffle=True, drop_last=True),
        DataLoader(TensorDataset(val_images), batch_size=64),
    )

    vae.eval()
    calibration = uint8_to_model_range(train_images[: train_cfg.scaling_images])
    shift = centre_latents(vae, calibration)
    scaling = measure_scaling_factor(vae, calibration)
    vae.register_to_config(scaling_factor=scaling)
    with torch.no_grad():
        images = uint8_to_model_range(val_images)
        reconstructions = torch.cat([reconstruct(vae, images[i : i + 64]) for i in range(0, len(images), 64)])
        scores = psnr(reconstructions, images)
        n = cfg.outputs.grid_images
        # Top row: held-out originals; bottom row: their reconstructions.
        save_grid(torch.cat([images[:n], reconstructions[:n]]), cfg.outputs.grid, min(n, len(images)), trainer.loggers)
    with atomic_dir(cfg.outputs.model_dir) as tmp:
        vae.save_pretrained(tmp)
    latent = vae.encode(images[:1]).latent_dist.mean
    metrics = {
        "heldout_clean_psnr_db": round(float(scores.mean()), 3),
        "heldout_clean_psnr_db_min": round(float(scores.min()), 3),
        "heldout_images": len(images),
        "scaling_factor": round(scaling, 6),
        "latent_mean_removed": [round(float(v), 4) for v in shift],
        "latent_shape": list(latent.shape[1:]),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "steps": trainer.global_step,
        "seconds": round(time.perf_counter() - start, 1),
    }
    write_json(cfg.outputs.metrics, metrics)
    print(f"VAE: held-out clean PSNR {metrics['heldout_clean_psnr_db']} dB, scaling factor {scaling:.4f}")
    return metrics


if __name__ == "__main__":
    main()
