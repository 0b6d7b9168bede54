"""Stage `train_controlnet`: a ControlNet-Transformer (PixArt-delta) on the frozen stage-2 PixArt."""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig

import pixart_lab.cli  # noqa: F401
from pixart_lab.cli.train_stage import fit, write_run_metrics
from pixart_lab.diffusion.control_sampling import CONTROLNET_DIR
from pixart_lab.utils.io import atomic_dir


@hydra.main(version_base="1.3", config_path="../../../conf", config_name="train_controlnet")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    module = instantiate(cfg.module, denoiser=instantiate(cfg.model.denoiser))
    result = fit(cfg, module, instantiate(cfg.data_module))

    controlnet = module.ema.module.controlnet  # EMA weights, as every stage exports
    with atomic_dir(Path(cfg.run_dir) / CONTROLNET_DIR) as tmp:
        controlnet.save_pretrained(tmp)
    trainable = sum(p.numel() for p in module.denoiser.parameters() if p.requires_grad)
    return write_run_metrics(cfg, module, result, start, base=cfg.base, control=cfg.control.name,
                             num_layers=cfg.controlnet.num_layers, trainable_parameters=trainable)  # fmt: skip


if __name__ == "__main__":
    main()
