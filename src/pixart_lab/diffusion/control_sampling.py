"""Sampling with a control image: diffusers' scheduler loop through the ControlNet-controlled PixArt.

:func:`generate_with_control` is ``PixArtAlphaPipeline.__call__``'s loop (the pipeline's own prompt
encoding, initial noise, scheduler and VAE decoding) with the transformer call replaced by
:func:`~pixart_lab.models.controlnet.controlled_forward`. Without a ControlNet it returns exactly what
the pipeline returns for the same prompts and seed (a test checks this), so "controlled vs
uncontrolled" compares the same noise, prompts and sampler.

Classifier-free guidance is on the caption only: both branches see the control (the negative prompt
is ``""``, training's caption-dropout condition).

An export is a diffusers ``PixArtAlphaPipeline`` folder with the ControlNet in ``controlnet/``::

    exports/pixart_controlnet/model_index.json, transformer/, vae/, text_encoder/, tokenizer/, scheduler/
    exports/pixart_controlnet/controlnet/{config.json,diffusion_pytorch_model.safetensors}
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import PixArtAlphaPipeline, SchedulerMixin
from tqdm import tqdm

from pixart_lab.data.control_features import encode_control_latents
from pixart_lab.data.transforms import model_range_to_uint8
from pixart_lab.diffusion.sampling import export_pipeline, load_pipeline
from pixart_lab.models.controlnet import PixArtControlNet, controlled_forward

CONTROLNET_DIR = "controlnet"


def control_latents(pipeline: PixArtAlphaPipeline, edges: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents of uint8 edge maps (N x 1 x H x W): the ``control`` the sampler takes."""
    vae = pipeline.vae
    return encode_control_latents(vae, edges.to(vae.device)) * vae.config.scaling_factor


def micro_conditions(pipeline: PixArtAlphaPipeline, n: int, height: int, width: int, dtype: torch.dtype) -> dict:
    """PixArt-MS resolution / aspect-ratio conditions, given exactly when the pipeline gives them (sample_size 128)."""
    if pipeline.transformer.config.sample_size != 128:
        return {"resolution": None, "aspect_ratio": None}
    device = pipeline.transformer.device
    resolution = torch.tensor([height, width]).repeat(n, 1).to(dtype=dtype, device=device)
    aspect_ratio = torch.tensor([float(height / width)]).repeat(n, 1).to(dtype=dtype, device=device)
    return {"resolution": resolution, "aspect_ratio": aspect_ratio}


@torch.no_grad()
def generate_with_control(
    pipeline: PixArtAlphaPipeline,
    controlnet: PixArtControlNet | None,
    prompts: Sequence[str],
    control: torch.Tensor | None,
    steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] (N x 3 x H x W) for ``prompts`` under scaled control latents ``control`` (N x C x h x w).

    ``controlnet=None`` (or ``control=None``) samples the base model alone: the uncontrolled reference.
    """
    transformer, scheduler, vae = pipeline.transformer, pipeline.scheduler, pipeline.vae
    device, n = transformer.device, len(prompts)
    if control is not None and len(control) != n:
        raise ValueError(f"{n} prompts but {len(control)} control latents")
    height = height or transformer.config.sample_size * pipeline.vae_scale_factor
    width = width or transformer.config.sample_size * pipeline.vae_scale_factor
    guided = guidance_scale > 1.0
    generator = torch.Generator(device="cpu").manual_seed(seed)

    emb, mask, null_emb, null_mask = pipeline.encode_prompt(
        list(prompts), guided, negative_prompt="", device=device, clean_caption=False, max_sequence_length=120
    )
    if guided:
        emb, mask = torch.cat([null_emb, emb]), torch.cat([null_mask, mask])
        control = torch.cat([control, control]) if control is not None else None
    scheduler.set_timesteps(steps, device=device)
    channels = transformer.config.in_channels
    latents = pipeline.prepare_latents(n, channels, height, width, emb.dtype, device, generator)
    step_kwargs = pipeline.prepare_extra_step_kwargs(generator, 0.0)
    added = micro_conditions(pipeline, len(emb), height, width, emb.dtype)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)

    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        output = controlled_forward(transformer, controlnet, x_in, t[None].expand(len(x_in)), emb, mask, control, added)
        if guided:
            uncond, cond = output.chunk(2)
            output = uncond + guidance_scale * (cond - uncond)
        eps = output.chunk(2, dim=1)[0] if transformer.config.out_channels // 2 == channels else output
        latents = scheduler.step(eps, t, latents, **step_kwargs, return_dict=False)[0]

    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return pipeline.image_processor.postprocess(images, output_type="pt").float() * 2 - 1


def generate_many_with_control(
    pipeline: PixArtAlphaPipeline,
    controlnet: PixArtControlNet | None,
    prompts: Sequence[str],
    control: torch.Tensor | None,
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    **sampling,
) -> torch.Tensor:
    """uint8 images, ``batch_size`` at a time (batch ``k`` seeded ``seed + k``, as ``generate_many`` does)."""
    out = []
    chunks = range(0, len(prompts), batch_size)
    for k, i in enumerate(tqdm(chunks, desc=f"generate {len(prompts)}", disable=not progress)):
        part = control[i : i + batch_size] if control is not None else None
        out.append(generate_with_control(pipeline, controlnet, prompts[i : i + batch_size], part, seed=seed + k, **sampling))
    return model_range_to_uint8(torch.cat(out))


def export_controlled_pipeline(pipeline: PixArtAlphaPipeline, controlnet: PixArtControlNet, directory: str | Path) -> Path:
    """The base pipeline as a diffusers folder with the ControlNet in ``controlnet/`` (one atomic write)."""
    return export_pipeline(pipeline, directory, extras={CONTROLNET_DIR: controlnet})


def load_controlled_pipeline(directory: str | Path, scheduler: SchedulerMixin) -> tuple[PixArtAlphaPipeline, PixArtControlNet]:
    """An export's pipeline (its scheduler class swapped for ``scheduler``'s) and its ControlNet."""
    directory = Path(directory)
    if not (directory / CONTROLNET_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{directory}: no ControlNet export ({CONTROLNET_DIR}/config.json); write one with export_controlled_pipeline")
    return load_pipeline(directory, scheduler), PixArtControlNet.from_pretrained(directory / CONTROLNET_DIR).eval()
