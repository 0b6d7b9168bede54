"""The SD-class baseline: Stable Diffusion's objective, its UNet layout, and sampling as trained."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from tiny_models import tiny_denoiser, tiny_unet

from pixart_lab.data.datamodule import FeatureDataModule
from pixart_lab.diffusion.iddpm_loss import simple_loss
from pixart_lab.diffusion.sampling import assemble_pipeline, condition_kwargs, export_pipeline, generate, with_noise_schedule
from pixart_lab.diffusion.schedule import NoiseSchedule
from pixart_lab.models.denoisers import unmasked_context
from pixart_lab.training.diffusion_module import DiffusionModule

REPO_ROOT = Path(__file__).resolve().parents[2]
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}


def test_scaled_linear_schedule_is_the_table_diffusers_samples_with():
    ours = NoiseSchedule.named("scaled_linear", 1000, 0.00085, 0.012)
    theirs = DDPMScheduler(**SD_SCHEDULE)
    torch.testing.assert_close(ours.betas.float(), theirs.betas, atol=0, rtol=1e-6)  # diffusers: float32
    torch.testing.assert_close(ours.alphas_cumprod.float(), theirs.alphas_cumprod, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        NoiseSchedule.named("cosine", 1000, 0.1, 0.2)


def test_simple_loss_is_the_epsilon_mse_and_refuses_a_variance_output():
    noise, output = torch.zeros(2, 4, 3, 3), torch.ones(2, 4, 3, 3)
    output[1] *= 2
    parts = simple_loss(output, noise)
    assert parts["loss"].tolist() == parts["mse"].tolist() == [1.0, 4.0]
    with pytest.raises(ValueError, match=r"must output \(2, 4, 3, 3\), got \(2, 8, 3, 3\)"):
        simple_loss(torch.zeros(2, 8, 3, 3), noise)


def test_unmasked_context_zeroes_padding_and_has_a_fixed_length():
    emb = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2) + 1
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    context = unmasked_context(emb, mask, 5)
    assert context.shape == (2, 5, 2)
    torch.testing.assert_close(context[0, :2], emb[0, :2])
    assert context[0, 2:].abs().sum() == 0 and context[1, 1:].abs().sum() == 0
    assert unmasked_context(emb, torch.ones(2, 3), 2).shape == (2, 2, 2)  # longer captions are cut


def test_the_baseline_trains_on_stable_diffusions_objective(tiny_features, tiny_text_encoder, tmp_path):
    module = DiffusionModule(
        tiny_denoiser("unet", tiny_text_encoder), partial(torch.optim.AdamW, lr=1e-3), warmup_steps=1,
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, learned_variance=False,
    )  # fmt: skip
    initial = {k: v.clone() for k, v in module.denoiser.state_dict().items()}
    run = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    run.fit(module, datamodule=FeatureDataModule(tiny_features, val_split=None, batch_size=4))
    logged = run.logged_metrics
    assert "train/vlb" not in logged and float(logged["train/loss"]) == float(logged["train/mse"])
    assert 0.1 < float(logged["train/mse"]) < 10
    changed = [k for k, v in module.denoiser.state_dict().items() if not torch.equal(v, initial[k])]
    assert "unet.conv_out.weight" in changed and "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight" in changed
    assert module.schedule.betas[-1].item() == pytest.approx(0.012)
    assert module.denoiser.network is module.denoiser.unet and module.denoiser.component == "unet"


def compose_model(name: str, backbone: str = "tiny"):
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("train_stage", [f"model={name}", f"backbone={backbone}"]).model


def test_sd_layout_configs_give_the_scaled_baseline_and_the_real_860m_unet():
    tiny = instantiate(compose_model("unet_sd").denoiser.unet)
    assert tiny.config.down_block_types == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert tiny.config.layers_per_block == 2 and tiny.config.out_channels == 4
    assert 2.2e6 < sum(p.numel() for p in tiny.parameters()) < 2.4e6  # the embedded PixArt: 2.2 M
    real = compose_model("unet_sd15")
    assert real.objective.beta_schedule == "scaled_linear" and not real.objective.learned_variance
    with torch.device("meta"):
        sd15 = instantiate({**real.denoiser.unet, "encoder_hid_dim": None, "encoder_hid_dim_type": None})
    assert sum(p.numel() for p in sd15.parameters()) == 859_520_964  # runwayml/stable-diffusion-v1-5's unet


def test_the_baseline_pipeline_samples_with_the_context_it_was_trained_on(tiny_vae, tiny_text_encoder, tmp_path):
    denoiser = tiny_denoiser("unet", tiny_text_encoder)
    scheduler = with_noise_schedule(instantiate({"_target_": "diffusers.DPMSolverMultistepScheduler"}), SD_SCHEDULE)
    pipeline = assemble_pipeline(denoiser.unet.eval(), tiny_vae, scheduler, tiny_text_encoder)
    assert isinstance(pipeline, StableDiffusionPipeline) and pipeline.scheduler.config.beta_schedule == "scaled_linear"

    prompts = ["a sharp image of a large red circle in the centre on a white background", "two blue squares"]
    kwargs = condition_kwargs(pipeline, prompts)
    # Training reads cached embeddings padded to the batch's longest caption, then unmasked_context.
    emb, mask = tiny_text_encoder.encode(prompts, pad_to_max_length=False)
    torch.testing.assert_close(kwargs["prompt_embeds"], unmasked_context(emb, mask, tiny_text_encoder.max_length))
    null = denoiser.drop_conditions({"caption_emb": emb, "caption_mask": mask}, torch.tensor([True, True]))
    torch.testing.assert_close(kwargs["negative_prompt_embeds"], unmasked_context(null["caption_emb"], null["caption_mask"], 120))

    images = generate(pipeline, prompts, steps=3, seed=5, height=64, width=64)
    assert images.shape == (2, 3, 64, 64) and images.std() > 0.01
    export_pipeline(pipeline, tmp_path / "sd")
    reloaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    assert torch.equal(generate(reloaded, prompts, steps=3, seed=5, height=64, width=64), images)


def test_a_real_sd_folder_with_a_clip_text_encoder_is_loaded_and_sampled_by_path(tiny_vae, tmp_path):
    """A Stable Diffusion folder as published (CLIP tokenizer and text tower, scaled-linear PNDM)."""
    import json

    from diffusers import PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pixart_lab.diffusion.sampling import load_pipeline

    words = ["a", "red", "circle", "blue", "square", "two"]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{f"{w}</w>": i + 2 for i, w in enumerate(words)}}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"), model_max_length=8)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=8, eos_token_id=1, bos_token_id=0))  # fmt: skip
    sd = StableDiffusionPipeline(vae=tiny_vae, text_encoder=text, tokenizer=tokenizer, unet=tiny_unet(16),
                                 scheduler=PNDMScheduler(**SD_SCHEDULE), safety_checker=None, feature_extractor=None,
                                 requires_safety_checker=False)  # fmt: skip
    sd.save_pretrained(tmp_path / "sd15")

    configured = instantiate({"_target_": "diffusers.DPMSolverMultistepScheduler", "beta_schedule": "linear"})
    pipeline = load_pipeline(tmp_path / "sd15", configured)
    assert type(pipeline.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipeline.scheduler.config.beta_schedule == "scaled_linear"  # the folder's own schedule
    images = generate(pipeline, ["a red circle", "two blue square"], steps=3, seed=0, height=64, width=64)
    assert images.shape == (2, 3, 64, 64) and math.isfinite(float(images.abs().sum()))
