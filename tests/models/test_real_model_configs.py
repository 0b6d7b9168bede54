"""The real-model config choices load through the same code, tested on tiny stand-ins built here."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import pixart_lab.config  # noqa: F401
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.utils.hub import MissingWeightsError

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def extract_features_cfg(*overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("extract_features", overrides=list(overrides))


def test_sd_vae_choice_loads_a_local_folder_with_sd_scaling(tiny_vae, tmp_path):
    tiny_vae.save_pretrained(tmp_path / "sd-vae-ft-ema")
    cfg = extract_features_cfg("vae=sd_vae_ft_ema", f"vae.pretrained={tmp_path / 'sd-vae-ft-ema'}")
    vae = load_vae(cfg.vae.pretrained, cfg.vae.subfolder, cfg.vae.scaling_factor)
    assert vae.config.scaling_factor == 0.18215


def test_t5_xxl_choice_loads_a_local_stand_in(tiny_text_encoder, tmp_path):
    tiny_text_encoder.save_pretrained(tmp_path / "t5")
    cfg = extract_features_cfg("text_encoder=t5_v1_1_xxl", f"text_encoder.pretrained={tmp_path / 't5'}")
    encoder = FrozenTextEncoder.from_pretrained(cfg.text_encoder.pretrained, max_length=cfg.text_encoder.max_length)
    emb, mask = encoder.encode(["a red circle"])
    assert emb.shape == (1, 120, tiny_text_encoder.hidden_size) and int(mask.sum()) > 1


def test_t5_xxl_choice_keeps_pixart_caption_length_in_bfloat16_or_8_bit():
    cfg = extract_features_cfg("text_encoder=t5_v1_1_xxl")
    assert (cfg.text_encoder.pretrained, cfg.text_encoder.max_length) == ("google/t5-v1_1-xxl", 120)
    assert (cfg.text_encoder.dtype, cfg.text_encoder.load_in_8bit) == ("bfloat16", True)


def test_clip_l14_choice_loads_a_local_clip_folder(tiny_text_encoder, tmp_path):
    from pixart_lab.evaluation.clip_model import build_clip, load_clip, save_clip

    save_clip(*build_clip(tiny_text_encoder.tokenizer, image_size=32, width=32, layers=1, heads=2), tmp_path / "clip-l14")
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("evaluate", ["eval=real", f"eval.clip={tmp_path / 'clip-l14'}"])
    model, processor = load_clip(cfg.eval.clip)
    assert model.config.vision_config.image_size == 32 and processor.tokenizer is not None


def hub_offline_message(component: str, name: str, setting: str, extra: str = "") -> str:
    return (
        f"{component} '{name}' is not available: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids "
        f"downloading it. Download it once where there is network access (`hf download {name}`) and set {setting} "
        f"to the downloaded folder.{extra}"
    )


def load_from_config(group: str, choice: str):
    """The loader each real component's config choice goes through, called with the configured name."""
    from pixart_lab.data.captioning import Captioner
    from pixart_lab.evaluation.clip_model import load_clip

    if group == "captioner":
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return Captioner(compose("caption", [f"captioner={choice}", "data.root=/x"]).captioner.model)
    if group == "eval":
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return load_clip(compose("evaluate", [f"eval={choice}"]).eval.clip)
    cfg = extract_features_cfg(f"{group}={choice}")
    if group == "vae":
        return load_vae(cfg.vae.pretrained, cfg.vae.subfolder, cfg.vae.scaling_factor)
    return FrozenTextEncoder.from_config(cfg.text_encoder)


@pytest.mark.parametrize(
    "group, choice, message",
    [("vae", "sd_vae_ft_ema", hub_offline_message("VAE", "stabilityai/sd-vae-ft-ema", "vae.pretrained")),
     ("text_encoder", "t5_v1_1_xxl", hub_offline_message(
         "Text encoder", "google/t5-v1_1-xxl", "text_encoder.pretrained",
         " A local folder holds 'tokenizer/' and 'encoder/' (as the train_text_encoder stage writes them), 'tokenizer/' "
         "and 'text_encoder/' (a PixArt diffusers pipeline), or a tokenizer beside a T5 config.json and weights.")),
     ("eval", "real", hub_offline_message(
         "CLIP evaluator", "openai/clip-vit-large-patch14", "eval.clip",
         " For the embedded CLIP, run the train_evaluators stage.")),
     ("captioner", "llava", hub_offline_message("Captioner", "llava-hf/llava-1.5-7b-hf", "captioner.model")),
     ("captioner", "blip2", hub_offline_message("Captioner", "Salesforce/blip2-opt-2.7b", "captioner.model")),
     ("captioner", "florence2", hub_offline_message("Captioner", "florence-community/Florence-2-large", "captioner.model"))],
)  # fmt: skip
def test_every_real_component_missing_offline_names_itself_and_the_fix(group, choice, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingWeightsError) as err:
        load_from_config(group, choice)
    assert str(err.value) == message
