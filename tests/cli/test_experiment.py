"""experiment=pixart_xl_1024: the paper's scale and per-phase settings compose, and the models build on meta."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

import pixart_lab.config  # noqa: F401  (resolvers)

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def experiment(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train_stage", ["experiment=pixart_xl_1024", *overrides])


@pytest.mark.parametrize(
    "overrides, phase, size, scale, micro, batch, parameters",
    [(["stage=2_alignment"], "stage2", 32, 1, False, 176, 610_856_096),
     (["stage=3_aesthetic", "model=pixart", "phase=stage3_256"], "stage3_256", 32, 1, False, 176, 610_856_096),
     (["stage=3_aesthetic", "model=pixart", "phase=stage3_512"], "stage3_512", 64, 1, False, 38, 610_856_096),
     (["stage=3_aesthetic"], "stage3", 128, 2, True, 12, 611_349_152)],
)  # fmt: skip
def test_pixart_phases_compose_and_build_xl2_on_meta(overrides, phase, size, scale, micro, batch, parameters):
    cfg = experiment(*overrides)
    assert (cfg.phase, cfg.run_name, cfg.paths.features_dir) == (phase, phase, f"features/{cfg.pixart_xl[phase].features}")
    assert (cfg.text_encoder.pretrained, cfg.text_encoder.max_length) == ("google/t5-v1_1-xxl", 120)
    assert (cfg.vae.pretrained, cfg.vae.scaling_factor) == ("stabilityai/sd-vae-ft-ema", 0.18215)
    assert (cfg.stage.lr, cfg.stage.batch_size, cfg.stage.grad_clip, cfg.stage.warmup_steps) == (2e-5, batch, 0.01, 1000)
    assert cfg.module.gradient_checkpointing and cfg.trainer.precision == "bf16-mixed" and cfg.stage.ema_decay == 0.9999
    assert cfg.model.denoiser.text_encoder_dtype == "bfloat16" and cfg.model.denoiser.load_in_8bit
    with torch.device("meta"):
        transformer = instantiate(cfg.model.denoiser.transformer)
    config = transformer.config
    assert (config.sample_size, config.interpolation_scale, transformer.use_additional_conditions) == (size, scale, micro)
    assert (config.num_layers, config.num_attention_heads * config.attention_head_dim, config.caption_channels) == (28, 1152, 4096)
    assert sum(p.numel() for p in transformer.parameters()) == parameters
    optimizer = instantiate(cfg.module.optimizer)(transformer.parameters())
    assert optimizer.defaults["weight_decay"] == 0.03 and optimizer.defaults["eps"] == 1e-10


def test_stage1_is_dits_imagenet_recipe_at_256():
    cfg = experiment("stage=1_pixel")
    assert (cfg.phase, cfg.init, cfg.stage.lr, cfg.module.optimizer.weight_decay) == ("stage1", "scratch", 1e-4, 0.0)
    with torch.device("meta"):
        dit = instantiate(cfg.model.denoiser)  # embedders tied as in the original DiT
    assert dit.transformer.config.sample_size == 32
    assert round(sum(p.numel() for p in dit.parameters()) / 1e6) == 675  # DiT-XL/2: 675M (Peebles & Xie 2023)


@pytest.mark.slow  # the same composition as above, through the command line (~25 s of start-up on 2 cores)
def test_the_experiment_prints_with_cfg_job():
    out = subprocess.run(
        [sys.executable, "-m", "pixart_lab.cli.train_stage", "experiment=pixart_xl_1024", "stage=3_aesthetic", "--cfg", "job", "--resolve"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("run_name: stage3", "init: stage3_512", "features_dir: features/aesthetic_1024_ms", "interpolation_scale: 2",
                 "use_additional_conditions: true", "caption_channels: 4096", "precision: bf16-mixed"):  # fmt: skip
        assert line in out.stdout, line
