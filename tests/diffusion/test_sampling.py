from pathlib import Path

import pytest
import torch
from diffusers import DiTPipeline, PixArtAlphaPipeline
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_models import tiny_denoiser

from pixart_lab.diffusion.sampling import assemble_pipeline, export_pipeline, generate, with_noise_schedule, resolve_source

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a sharp image of a large red circle in the centre on a white background", "two blue squares"]


def scheduler(name="dpm_solver"):
    return instantiate(OmegaConf.load(REPO_ROOT / "conf" / "sampler" / f"{name}.yaml").scheduler)


def test_exported_pixart_pipeline_loads_with_plain_diffusers_and_gives_the_same_images(tiny_vae, tiny_text_encoder, tmp_path):
    transformer = tiny_denoiser("pixart_ms", tiny_text_encoder).transformer.eval()
    pipeline = assemble_pipeline(transformer, tiny_vae, scheduler(), tiny_text_encoder)
    images = generate(pipeline, PROMPTS, steps=3, seed=7, height=48, width=96)
    assert images.shape == (2, 3, 48, 96) and images.std() > 0.01
    assert images.min() >= -1 and images.max() <= 1

    export_pipeline(pipeline, tmp_path / "pipe")
    reloaded = PixArtAlphaPipeline.from_pretrained(tmp_path / "pipe")
    assert reloaded.transformer.config.use_additional_conditions
    assert torch.equal(generate(reloaded, PROMPTS, steps=3, seed=7, height=48, width=96), images)
    assert not torch.equal(generate(reloaded, PROMPTS, steps=3, seed=8, height=48, width=96), images)


def test_exported_dit_pipeline_with_tied_embedders_reloads_identically(tiny_vae, tiny_text_encoder, tmp_path):
    transformer = tiny_denoiser("dit", tiny_text_encoder).transformer.eval()
    blocks = transformer.transformer_blocks
    assert blocks[0].norm1.emb is blocks[1].norm1.emb  # tied, as trained
    pipeline = assemble_pipeline(transformer, tiny_vae, scheduler(), id2label={0: "red circle", 10: "blue square"})
    images = generate(pipeline, [0, 10], steps=3, seed=1)
    export_pipeline(pipeline, tmp_path / "dit")
    reloaded = DiTPipeline.from_pretrained(tmp_path / "dit")
    assert images.shape == (2, 3, 64, 64)
    assert torch.equal(generate(reloaded, [0, 10], steps=3, seed=1), images)


@pytest.mark.parametrize("name", ["dpm_solver", "sa_solver", "ddim"])
def test_every_configured_sampler_runs_with_the_training_schedule(name, tiny_vae, tiny_text_encoder):
    config = OmegaConf.load(REPO_ROOT / "conf" / "sampler" / f"{name}.yaml")
    chosen = scheduler(name)
    assert chosen.config.beta_schedule == "linear" and chosen.config.num_train_timesteps == 1000
    pipeline = assemble_pipeline(tiny_denoiser("pixart", tiny_text_encoder).transformer.eval(), tiny_vae, chosen, tiny_text_encoder)
    images = generate(pipeline, PROMPTS[:1], steps=4, seed=0, height=64, width=64)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    assert config.steps > 0 and config.guidance_scale == 4.5


def test_null_caption_matches_the_pipelines_empty_negative_prompt(tiny_vae, tiny_text_encoder):
    denoiser = tiny_denoiser("pixart", tiny_text_encoder)
    pipeline = assemble_pipeline(denoiser.transformer, tiny_vae, scheduler(), tiny_text_encoder)
    _, _, negative, negative_mask = pipeline.encode_prompt(
        "a red circle", do_classifier_free_guidance=True, negative_prompt="", clean_caption=False
    )
    n = int(negative_mask.sum())
    assert n == int(denoiser.null_caption_mask.sum()) == 1  # "" is one </s> token
    torch.testing.assert_close(negative[0, :n].float(), denoiser.null_caption_emb[:n], atol=1e-5, rtol=0)

    batch = {"caption_emb": torch.randn(2, 5, tiny_text_encoder.hidden_size), "caption_mask": torch.ones(2, 5, dtype=torch.long)}
    dropped = denoiser.drop_conditions(batch, torch.tensor([True, False]))
    assert dropped["caption_mask"].tolist() == [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1]]
    torch.testing.assert_close(dropped["caption_emb"][0, :1], denoiser.null_caption_emb[:1])
    assert dropped["caption_emb"][0, 1:].abs().sum() == 0
    torch.testing.assert_close(dropped["caption_emb"][1], batch["caption_emb"][1])


def test_a_swapped_sampler_keeps_its_own_settings_on_the_models_noise_schedule():
    trained = dict(scheduler("dpm_solver").config, beta_schedule="scaled_linear", beta_end=0.012)  # an SD-style model
    ddim = with_noise_schedule(scheduler("ddim"), trained)
    assert type(ddim).__name__ == "DDIMScheduler"
    assert (ddim.config.beta_schedule, ddim.config.beta_end) == ("scaled_linear", 0.012)
    assert ddim.config.clip_sample is False  # conf/sampler/ddim.yaml; DDIM's own default would clip latents to [-1, 1]
    assert type(ddim).from_config(trained).config.clip_sample is True


def test_a_missing_source_names_the_path_it_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        resolve_source("stage9", tmp_path)
    assert str(error.value) == (
        "source='stage9': no transformer weights (diffusion_pytorch_model.safetensors, diffusion_pytorch_model.safetensors.index.json, "
        f"diffusion_pytorch_model.bin) in {tmp_path / 'stage9' / 'transformer'}; run that stage first, "
        "or give an official .pth, a diffusers transformer folder or a pipeline folder"
    )
