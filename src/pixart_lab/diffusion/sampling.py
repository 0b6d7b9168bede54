"""Sampling through diffusers pipelines assembled from the project's own components.

``PixArtAlphaPipeline`` (stages 2-3) and ``DiTPipeline`` (stage 1) run the trained transformer with
the project's VAE, tokenizer and frozen T5; the scheduler (DPM-Solver++, SA-Solver, DDIM) comes from
``conf/sampler``. :func:`export_pipeline` writes a folder that plain ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SchedulerMixin,
)
from torch import nn

from pixart_lab.data.scene import NUM_CLASSES, class_name
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.vae import load_vae
from pixart_lab.utils.io import atomic_dir


def untied_copy(transformer: nn.Module) -> nn.Module:
    """A standalone copy of a diffusers transformer (tied embedders become equal copies).

    ``save_pretrained`` writes safetensors, which refuses tensors that share memory.
    """
    clone = type(transformer).from_config(transformer.config)
    clone.load_state_dict(transformer.state_dict())
    dtype = next(transformer.parameters()).dtype
    return (clone if dtype == torch.float32 else clone.to(dtype)).eval()


def assemble_pipeline(
    transformer: nn.Module,
    vae: AutoencoderKL,
    scheduler: SchedulerMixin,
    text_encoder: FrozenTextEncoder | None = None,
    id2label: Mapping[int, str] | None = None,
) -> DiffusionPipeline:
    """``PixArtAlphaPipeline`` for a PixArt transformer, ``DiTPipeline`` for a class-conditional DiT."""
    if isinstance(transformer, PixArtTransformer2DModel):
        if text_encoder is None:
            raise ValueError("a PixArt pipeline needs the text encoder (tokenizer + T5) it was trained with")
        pipeline = PixArtAlphaPipeline(
            tokenizer=text_encoder.tokenizer,
            text_encoder=text_encoder.encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
    elif isinstance(transformer, DiTTransformer2DModel):
        pipeline = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=dict(id2label or {}))
    else:
        raise TypeError(f"no pipeline for {type(transformer).__name__}; expected PixArt or DiT transformer")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def generate(
    pipeline: DiffusionPipeline,
    conditions: Sequence[str] | Sequence[int],
    steps: int = 20,
    guidance_scale: float = 4.5,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
) -> torch.Tensor:
    """Images in [-1, 1] (N x 3 x H x W) for prompts (PixArt) or class labels (DiT), from one seed.

    PixArt: the default negative prompt ``""`` is the condition that training's caption dropout uses;
    resolution binning is off (its tables are for the official 256-1024 px models) and so is
    caption cleaning (the corpus captions are already clean, lower-case text).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if isinstance(pipeline, DiTPipeline):
        images = pipeline(
            class_labels=[int(c) for c in conditions],
            guidance_scale=guidance_scale,
            num_inference_steps=steps,
            generator=generator,
            output_type="pt",
        ).images
    else:
        images = pipeline(
            prompt=[str(c) for c in conditions],
            negative_prompt=negative_prompt,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            generator=generator,
            output_type="pt",
            clean_caption=False,
            use_resolution_binning=False,
        ).images
    return torch.as_tensor(images).float() * 2 - 1


def export_pipeline(pipeline: DiffusionPipeline, directory: str | Path) -> Path:
    """Write ``pipeline`` as a diffusers folder (atomically), transformer untied for safetensors."""
    components = dict(pipeline.components)
    components["transformer"] = untied_copy(components["transformer"])
    standalone = type(pipeline)(**components)
    with atomic_dir(directory) as tmp:
        standalone.save_pretrained(tmp)
    return Path(directory)


def load_transformer(folder: Path) -> nn.Module:
    """The diffusers transformer class named in ``folder/config.json``, loaded from it."""
    name = json.loads((Path(folder) / "config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(folder).eval()


def resolve_source(source: str, checkpoints_dir: str | Path) -> Path:
    """A diffusers pipeline folder as given, else what ``resolve_init`` makes of a run name or folder."""
    from pixart_lab.training.checkpoints import resolve_init

    if (Path(source) / "model_index.json").is_file():
        return Path(source)
    try:
        folder = resolve_init(source, checkpoints_dir, key="source")
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{error}, or give a diffusers pipeline folder (with model_index.json)") from None
    if folder is None:
        raise FileNotFoundError(f"source={source!r}: expected a run name, a transformer folder or a diffusers pipeline folder")
    return folder


# What a model was trained with; a sampler keeps these and brings its own solver settings.
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def on_noise_schedule(scheduler: SchedulerMixin, trained: Mapping) -> SchedulerMixin:
    """``scheduler`` (its class and solver settings) on the noise schedule recorded in ``trained``.

    ``from_config`` of another sampler's config alone would fill the new class's own defaults,
    e.g. DDIM's ``clip_sample=True``, which clips latent predictions to [-1, 1].
    """
    schedule = {key: trained[key] for key in NOISE_SCHEDULE_KEYS if key in trained}
    return type(scheduler).from_config({**scheduler.config, **schedule})


def load_pipeline(
    folder: str | Path,
    scheduler: SchedulerMixin,
    vae: Mapping | None = None,
    text_encoder: Mapping | None = None,
) -> DiffusionPipeline:
    """A pipeline from a diffusers pipeline folder (``model_index.json``) or a transformer folder.

    A pipeline folder keeps its own components; the sampler is swapped in on the folder's own
    noise schedule (so an SD-style scaled-linear model stays scaled-linear). A bare
    transformer folder (a run's EMA export) is assembled with the project's ``vae`` and
    ``text_encoder`` configs and the configured ``scheduler``.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        pipeline = DiffusionPipeline.from_pretrained(folder)
        pipeline.scheduler = on_noise_schedule(scheduler, pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is neither a diffusers pipeline (model_index.json) nor a transformer folder")
    transformer = load_transformer(folder)
    encoder = None
    if not isinstance(transformer, DiTTransformer2DModel):
        encoder = FrozenTextEncoder.from_pretrained(text_encoder["pretrained"], max_length=text_encoder["max_length"])
    vae_model = load_vae(vae["pretrained"], vae.get("subfolder"), vae.get("scaling_factor")).eval()
    id2label = {i: class_name(i) for i in range(NUM_CLASSES)}
    return assemble_pipeline(transformer, vae_model, scheduler, encoder, id2label)


def generate_many(
    pipeline: DiffusionPipeline,
    conditions: Sequence[str] | Sequence[int],
    batch_size: int,
    seed: int = 0,
    progress: bool = True,
    **sampling,
) -> torch.Tensor:
    """uint8 images for many conditions, ``batch_size`` at a time (batch ``i`` seeded ``seed + i``)."""
    from tqdm import tqdm

    chunks = range(0, len(conditions), batch_size)
    out = [
        generate(pipeline, conditions[i : i + batch_size], seed=seed + k, **sampling)
        for k, i in enumerate(tqdm(chunks, desc=f"generate {len(conditions)}", disable=not progress))
    ]
    return torch.cat(out).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
