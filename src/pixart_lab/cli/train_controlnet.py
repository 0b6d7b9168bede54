"""Stage `train_controlnet`: a ControlNet-Transformer (PixArt-delta) on the frozen stage-2 PixArt."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning import seed_everything
from omegaconf import DictConfig

from pixart_lab.cli.entry import entry_point
from pixart_lab.cli.train_stage import decide, fit, run_fingerprint, write_run_metrics
from pixart_lab.diffusion.control_sampling import CONTROLNET_DIR
from pixart_lab.utils.io import atomic_dir


@entry_point("train_controlnet")
def main(cfg: DictConfig) -> dict:
    seed_everything(cfg.seed, workers=True)
    torch.set_num_threads(cfg.num_threads)
    start = time.perf_counter()
    data = instantiate(cfg.data_module)
    fingerprint = run_fingerprint(cfg, data, init=None)  # the base's weights are in cfg.base, under model
    resume = decide(cfg, fingerprint)
    module = instantiate(cfg.module, denoiser=instantiate(cfg.model.denoiser))
    result = fit(cfg, module, data, fingerprint, resume)

    controlnet = module.ema.module.controlnet  # EMA weights, as every stage exports
    with atomic_dir(Path(cfg.run_dir) / CONTROLNET_DIR) as tmp:
        controlnet.save_pretrained(tmp)
    trainable = sum(p.numel() for p in module.denoiser.parameters() if p.requires_grad)
    return write_run_metrics(cfg, module, result, start, base=cfg.base, control=cfg.control.name,
                             num_layers=cfg.controlnet.num_layers, trainable_parameters=trainable)  # fmt: skip


if __name__ == "__main__":
    main()
