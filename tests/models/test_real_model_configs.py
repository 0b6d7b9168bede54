"""The real-model config choices load through the same code, tested on tiny stand-ins built here."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pixart_lab.config  # noqa: F401
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def extract_features_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("extract_features", overrides=list(overrides))


def test_sd_vae_choice_loads_a_local_folder_with_sd_scaling(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "sd-vae-ft-ema")
    cfg = extract_features_cfg("vae=sd_vae_ft_ema", f"vae.pretrained={tmp_path / 'sd-vae-ft-ema'}")
    vae = load_vae(cfg.vae.pretrained, cfg.vae.subfolder, cfg.vae.scaling_factor)
    assert vae.config.scaling_factor == 0.18215


def test_sd_vae_by_hub_name_offline_names_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = extract_features_cfg("vae=sd_vae_ft_ema")
    assert cfg.vae.pretrained == "stabilityai/sd-vae-ft-ema"
    with pytest.raises(FileNotFoundError, match="stabilityai/sd-vae-ft-ema"):
        load_vae(cfg.vae.pretrained, cfg.vae.subfolder, cfg.vae.scaling_factor)


def test_t5_xxl_choice_keeps_pixart_caption_length_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = extract_features_cfg("text_encoder=t5_v1_1_xxl")
    assert (cfg.text_encoder.pretrained, cfg.text_encoder.max_length) == ("google/t5-v1_1-xxl", 120)
    with pytest.raises(FileNotFoundError, match="google/t5-v1_1-xxl"):
        FrozenTextEncoder.from_pretrained(cfg.text_encoder.pretrained, max_length=cfg.text_encoder.max_length)


def test_t5_xxl_choice_loads_a_local_stand_in(tiny_text_encoder, tmp_path):
    tiny_text_encoder.save_pretrained(tmp_path / "t5")
    cfg = extract_features_cfg("text_encoder=t5_v1_1_xxl", f"text_encoder.pretrained={tmp_path / 't5'}")
    encoder = FrozenTextEncoder.from_pretrained(cfg.text_encoder.pretrained, max_length=cfg.text_encoder.max_length)
    emb, mask = encoder.encode(["a red circle"])
    assert emb.shape == (1, 120, tiny_text_encoder.hidden_size) and int(mask.sum()) > 1
