"""Sampling with a control image: the uncontrolled path is the diffusers pipeline; exports reload identically."""

from pathlib import Path

import pytest
import torch
from diffusers import PixArtAlphaPipeline
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tiny_models import tiny_denoiser

from pixart_lab.data.edges import CannyEdges
from pixart_lab.diffusion.control_sampling import (
    control_latents,
    export_controlled_pipeline,
    generate_with_control,
    load_controlled_pipeline,
)
from pixart_lab.diffusion.sampling import assemble_pipeline, generate
from pixart_lab.models.controlnet import PixArtControlNet

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a sharp image of a large red circle in the centre on a white background", "two blue squares"]


def scheduler():
    return instantiate(OmegaConf.load(REPO_ROOT / "conf" / "sampler" / "dpm_solver.yaml").scheduler)


@pytest.fixture
def pipeline(tiny_vae, tiny_text_encoder):
    return assemble_pipeline(tiny_denoiser("pixart", tiny_text_encoder).transformer.eval(), tiny_vae, scheduler(), tiny_text_encoder)


def edge_latents(pipeline, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (2, 3, 8, 8), generator=g, dtype=torch.uint8).repeat_interleave(8, 2).repeat_interleave(8, 3)
    return control_latents(pipeline, CannyEdges()(images))


def perturbed(controlnet):
    with torch.no_grad():
        for p in controlnet.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return controlnet


def test_uncontrolled_and_zero_initialised_sampling_equal_the_pipeline(pipeline):
    expected = generate(pipeline, PROMPTS, steps=3, seed=5, height=64, width=64)
    control = edge_latents(pipeline)
    assert control.shape == (2, 4, 16, 16)
    assert torch.equal(generate_with_control(pipeline, None, PROMPTS, None, steps=3, seed=5), expected)
    controlnet = PixArtControlNet.from_transformer(pipeline.transformer, num_layers=1)
    assert torch.equal(generate_with_control(pipeline, controlnet, PROMPTS, control, steps=3, seed=5), expected)
    steered = generate_with_control(pipeline, perturbed(controlnet), PROMPTS, control, steps=3, seed=5)
    assert (steered - expected).abs().max() > 0.05


def test_export_holds_the_pipeline_and_the_controlnet_and_reloads_identically(pipeline, tmp_path):
    controlnet = perturbed(PixArtControlNet.from_transformer(pipeline.transformer, num_layers=1))
    control = edge_latents(pipeline)
    images = generate_with_control(pipeline, controlnet, PROMPTS, control, steps=3, seed=2)
    export_controlled_pipeline(pipeline, controlnet, tmp_path / "export")
    assert (tmp_path / "export" / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert "controlnet" not in (tmp_path / "export" / "model_index.json").read_text()
    assert isinstance(PixArtAlphaPipeline.from_pretrained(tmp_path / "export"), PixArtAlphaPipeline)  # plain diffusers

    reloaded, reloaded_controlnet = load_controlled_pipeline(tmp_path / "export", scheduler())
    assert torch.equal(generate_with_control(reloaded, reloaded_controlnet, PROMPTS, control, steps=3, seed=2), images)
    with pytest.raises(FileNotFoundError, match="no ControlNet export"):
        load_controlled_pipeline(tmp_path, scheduler())


def test_control_count_must_match_the_prompts(pipeline):
    with pytest.raises(ValueError, match="2 prompts but 1 control latents"):
        generate_with_control(pipeline, None, PROMPTS, edge_latents(pipeline)[:1], steps=2)
