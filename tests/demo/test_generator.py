from types import SimpleNamespace

import numpy as np
import pytest
from diffusers.configuration_utils import FrozenDict
from tiny_pipelines import demo_model, tiny_pipeline

from pixart_lab.data.buckets import aspect_ratio_table
from pixart_lab.demo.generator import Settings, SettingsError, native_side, size_choices

PROMPT = "a sharp image of a large red circle in the centre on a white background"


def settings(**changes) -> Settings:
    values = dict(prompt=PROMPT, sampler="dpm_solver", steps=3, guidance_scale=4.5, seed=7, size="128x128")
    return Settings(**{**values, **changes})


def test_stage3_like_model_offers_its_128px_area_in_five_buckets(tiny_ms_model):
    assert native_side(tiny_ms_model.pipeline) == 128
    table = aspect_ratio_table(128, (0.5, 0.75, 1.0, 1.33, 2.0), multiple=8)
    assert list(tiny_ms_model.sizes.values()) == list(table.values())
    assert list(tiny_ms_model.sizes) == ["88x184", "112x144", "128x128", "144x112", "184x88"]
    assert tiny_ms_model.default_size == "128x128"


def test_square_models_offer_only_their_own_size(tiny_vae, tiny_text_encoder):
    stage2 = tiny_pipeline("pixart", tiny_vae, tiny_text_encoder)  # sample_size 16 latents, VAE factor 4
    assert size_choices(stage2, (0.5, 1.0, 2.0)) == {"64x64": (64, 64)}
    assert size_choices(stage2, (0.5, 1.0, 2.0), side=96) == {"96x96": (96, 96)}
    dit = tiny_pipeline("dit", tiny_vae, tiny_text_encoder)
    assert size_choices(dit, (0.5, 1.0, 2.0)) == {"64x64": (64, 64)}


@pytest.mark.parametrize(
    "transformer, side",
    [(dict(sample_size=128, interpolation_scale=None, use_additional_conditions=None, patch_size=2), 1024),  # PixArt-XL-2-1024-MS
     (dict(sample_size=64, interpolation_scale=None, use_additional_conditions=None, patch_size=2), 512),  # PixArt-XL-2-512x512
     (dict(sample_size=128, interpolation_scale=8, use_additional_conditions=True, patch_size=2), 256)],  # stage 3 over an 8x VAE
)  # fmt: skip
def test_native_side_follows_the_official_checkpoints(transformer, side):
    pipeline = SimpleNamespace(
        transformer=SimpleNamespace(config=FrozenDict(transformer)), vae=SimpleNamespace(config=FrozenDict(block_out_channels=[1, 2, 3, 4]))
    )
    assert native_side(pipeline) == side


def test_generates_the_chosen_bucket_reproducibly_with_its_settings(tiny_ms_model):
    result = tiny_ms_model.generate(settings(size="88x184"))
    assert result.image.size == (184, 88) and result.image.mode == "RGB"
    assert np.asarray(result.image).std() > 1
    assert result.caption == f"seed 7 · 88x184 · DPM-Solver++ · 3 steps · CFG 4.5 · '{PROMPT}'"
    again = tiny_ms_model.generate(settings(size="88x184"))
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    other_seed = tiny_ms_model.generate(settings(size="88x184", seed=8))
    assert not np.array_equal(np.asarray(other_seed.image), np.asarray(result.image))


def test_negative_prompt_and_sampler_change_the_image_and_the_caption(tiny_ms_model):
    plain = tiny_ms_model.generate(settings())
    negative = tiny_ms_model.generate(settings(negative_prompt="blue square"))
    assert negative.caption.endswith("· negative 'blue square'")
    assert not np.array_equal(np.asarray(negative.image), np.asarray(plain.image))
    ddim = tiny_ms_model.generate(settings(sampler="ddim"))
    assert "· DDIM ·" in ddim.caption
    scheduler = tiny_ms_model.pipeline.scheduler
    assert type(scheduler).__name__ == "DDIMScheduler" and scheduler.config.clip_sample is False
    assert not np.array_equal(np.asarray(ddim.image), np.asarray(plain.image))


@pytest.mark.parametrize(
    "changes, message",
    [(dict(prompt="   "), "enter a prompt: this model generates from text"),
     (dict(steps=0), "steps must be a whole number from 1 to 200, got 0"),
     (dict(steps=2.5), "steps must be a whole number from 1 to 200, got 2.5"),
     (dict(steps=None), "steps must be a whole number from 1 to 200, got nothing"),
     (dict(guidance_scale=50.0), "guidance scale must be from 1.0 to 20.0, got 50.0"),
     (dict(seed=-1), "seed must be a whole number from 0 to 2147483647, got -1"),
     (dict(size="64x64"), "size '64x64' is not available for this model; choose one of 88x184, 112x144, 128x128, 144x112, 184x88"),
     (dict(sampler="euler"), "sampler 'euler' is not one of dpm_solver, sa_solver, ddim")],
)  # fmt: skip
def test_invalid_settings_are_refused_with_a_message_naming_them(tiny_ms_model, changes, message):
    with pytest.raises(SettingsError) as error:
        tiny_ms_model.generate(settings(**changes))
    assert str(error.value) == message


def test_dit_model_generates_from_a_class_name(tiny_vae, tiny_text_encoder):
    model = demo_model(tiny_pipeline("dit", tiny_vae, tiny_text_encoder))
    assert model.classes == {"blue square": 10, "red circle": 0}
    result = model.generate(settings(prompt="red circle", size="64x64", guidance_scale=1.0))
    assert result.image.size == (64, 64)
    assert result.caption == "seed 7 · 64x64 · DPM-Solver++ · 3 steps · CFG 1 · class red circle"
    with pytest.raises(SettingsError, match="class 'green star' is not one of the model's 2 classes"):
        model.generate(settings(prompt="green star", size="64x64"))
