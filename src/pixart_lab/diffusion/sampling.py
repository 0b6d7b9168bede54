"""Sampling through diffusers pipelines assembled from the project's own components.

``PixArtAlphaPipeline`` (stages 2-3), ``DiTPipeline`` (stage 1) and ``StableDiffusionPipeline`` (the
SD-class baseline) run the trained network with the project's VAE, tokenizer and frozen T5; the
scheduler (DPM-Solver++, SA-Solver, DDIM) comes from ``conf/sampler``, on the noise schedule the
network was trained with. :func:`export_pipeline` writes a folder that plain ``from_pretrained`` loads.
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
    ModelMixin,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    SchedulerMixin,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from torch import nn
from tqdm import tqdm
from transformers import T5EncoderModel

from pixart_lab.data.scene import NUM_CLASSES, class_name
from pixart_lab.data.transforms import model_range_to_uint8
from pixart_lab.models.denoisers import unmasked_context
from pixart_lab.models.official_checkpoint import ORIGINAL_SUFFIXES, load_original_checkpoint
from pixart_lab.models.per_block_adaln import has_per_block_adaln, per_block_adaln
from pixart_lab.models.text_encoder import FrozenTextEncoder
from pixart_lab.models.tokenizer import warn_unknown_words
from pixart_lab.models.vae import load_vae
from pixart_lab.utils.io import atomic_dir, write_json

NOISE_SCHEDULE_FILE = "noise_schedule.json"
# What a sampler must share with training (a pipeline folder's scheduler config has them all).
NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_schedule", "beta_start", "beta_end", "trained_betas", "prediction_type")


def untied_copy(transformer: nn.Module) -> nn.Module:
    """A standalone copy of a diffusers transformer (tied embedders become equal copies).

    ``save_pretrained`` writes safetensors, which refuses tensors that share memory.
    """
    clone = type(transformer).from_config(transformer.config)
    if has_per_block_adaln(transformer):  # the adaLN ablation: its blocks' own MLPs are not in the config
        per_block_adaln(clone)
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
    """``PixArtAlphaPipeline`` for a PixArt transformer, ``DiTPipeline`` for a class-conditional DiT,
    ``StableDiffusionPipeline`` for the baseline's UNet (``transformer`` is the network either way)."""
    if isinstance(transformer, (PixArtTransformer2DModel, UNet2DConditionModel)) and text_encoder is None:
        raise ValueError(f"a {type(transformer).__name__} pipeline needs the text encoder (tokenizer + T5) it was trained with")
    if isinstance(transformer, PixArtTransformer2DModel):
        pipeline = PixArtAlphaPipeline(
            tokenizer=text_encoder.tokenizer,
            text_encoder=text_encoder.encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
    elif isinstance(transformer, UNet2DConditionModel):
        text_encoder.tokenizer.model_max_length = text_encoder.max_length  # the UNet's fixed context length
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder.encoder, tokenizer=text_encoder.tokenizer, unet=transformer,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    elif isinstance(transformer, DiTTransformer2DModel):
        pipeline = DiTPipeline(transformer=transformer, vae=vae, scheduler=scheduler, id2label=dict(id2label or {}))
    else:
        raise TypeError(f"no pipeline for {type(transformer).__name__}; expected a PixArt or DiT transformer or a UNet")
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def with_noise_schedule(scheduler: SchedulerMixin, schedule: Mapping | None) -> SchedulerMixin:
    """``scheduler`` (its class and solver settings) on the training noise ``schedule``: the
    ``NOISE_SCHEDULE_KEYS`` it has, e.g. a trained pipeline's scheduler config (None: as is).

    The sampler keeps its own settings: ``from_config`` of another sampler's config alone would fill
    the class's defaults, e.g. DDIM's ``clip_sample=True``, which clips latent predictions to [-1, 1].
    """
    if not schedule:
        return scheduler
    # As keyword arguments: keys in the config's ``_use_default_values`` would be dropped otherwise.
    overrides = {key: schedule[key] for key in NOISE_SCHEDULE_KEYS if key in schedule}
    return type(scheduler).from_config(scheduler.config, **overrides)


def condition_kwargs(pipeline: DiffusionPipeline, conditions: Sequence[str] | Sequence[int], negative_prompt: str = "") -> dict:
    """The call arguments that condition ``pipeline`` on prompts (or DiT class labels).

    The default negative prompt ``""`` is the condition that training's caption dropout uses. PixArt:
    resolution binning is off (its tables are for the official 256-1024 px models) and so is caption
    cleaning (the corpus captions are already clean, lower-case text). An SD pipeline around the
    project's T5 gets the embeddings its UNet was trained on (:func:`unmasked_context`); a real SD
    checkpoint (CLIP text encoder) encodes the prompts itself.
    """
    if isinstance(pipeline, DiTPipeline):
        return {"class_labels": [int(c) for c in conditions]}
    prompts = [str(c) for c in conditions]
    if getattr(pipeline, "tokenizer", None) is not None:
        warn_unknown_words(pipeline.tokenizer, prompts)
    if isinstance(pipeline, PixArtAlphaPipeline):
        return {"prompt": prompts, "negative_prompt": negative_prompt, "clean_caption": False, "use_resolution_binning": False}
    if isinstance(pipeline, StableDiffusionPipeline) and isinstance(pipeline.text_encoder, T5EncoderModel):
        encoder = FrozenTextEncoder(pipeline.tokenizer, pipeline.text_encoder, pipeline.tokenizer.model_max_length)
        embed = lambda texts: unmasked_context(*encoder.encode(texts), encoder.max_length)  # noqa: E731
        return {"prompt_embeds": embed(prompts), "negative_prompt_embeds": embed([negative_prompt] * len(prompts))}
    return {"prompt": prompts, "negative_prompt": [negative_prompt] * len(prompts)}


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
    """Images in [-1, 1] (N x 3 x H x W) for prompts or class labels (DiT, at its own size), from one
    seed; ``negative_prompt`` replaces the empty caption on the unconditional side of guidance."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    size = {} if isinstance(pipeline, DiTPipeline) else {"height": height, "width": width}
    images = pipeline(
        **condition_kwargs(pipeline, conditions, negative_prompt),
        **size,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="pt",
    ).images
    return torch.as_tensor(images).float() * 2 - 1


def export_pipeline(
    pipeline: DiffusionPipeline, directory: str | Path, extras: Mapping[str, ModelMixin] | None = None
) -> Path:
    """Write ``pipeline`` as a diffusers folder (atomically), its network untied for safetensors.

    ``extras`` are models saved in subfolders beside the pipeline's own (e.g. ``controlnet/``), in the
    same atomic write; ``model_index.json`` does not list them, so plain diffusers loads the pipeline as is.
    """
    components = dict(pipeline.components)
    network = "unet" if "unet" in components else "transformer"
    components[network] = untied_copy(components[network])
    standalone = type(pipeline)(**components)
    with atomic_dir(directory) as tmp:
        standalone.save_pretrained(tmp)
        for name, model in (extras or {}).items():
            model.save_pretrained(tmp / name)
    return Path(directory)


def load_transformer(source: Path) -> nn.Module:
    """The diffusers model class named in ``source/config.json`` (transformer or UNet), loaded from it;
    or the ``PixArtTransformer2DModel`` of an official original-layout ``.pth``."""
    if Path(source).suffix in ORIGINAL_SUFFIXES:
        return load_original_checkpoint(source).transformer
    name = json.loads((Path(source) / "config.json").read_text())["_class_name"]
    return getattr(diffusers, name).from_pretrained(source).eval()


def save_noise_schedule(run_dir: str | Path, schedule: Mapping) -> None:
    """Record the training noise schedule beside a run's exported network, for its samplers."""
    write_json(Path(run_dir) / NOISE_SCHEDULE_FILE, {k: schedule[k] for k in NOISE_SCHEDULE_KEYS if k in schedule})


def load_noise_schedule(network_folder: str | Path) -> dict | None:
    """The schedule recorded beside an exported network (None: none recorded)."""
    path = Path(network_folder).parent / NOISE_SCHEDULE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resolve_source(source: str, checkpoints_dir: str | Path) -> Path:
    """A diffusers pipeline folder as given, else what ``resolve_init`` makes of a run name, a folder or a ``.pth``."""
    from pixart_lab.training.checkpoints import resolve_init

    if (Path(source) / "model_index.json").is_file():
        return Path(source)
    folder = resolve_init(source, checkpoints_dir, key="source")
    if folder is None:
        raise FileNotFoundError(f"source={source!r}: expected a run name, a transformer folder or a diffusers pipeline folder")
    return folder


# What a model was trained with; a sampler keeps these and brings its own solver settings.
def load_pipeline(
    folder: str | Path,
    scheduler: SchedulerMixin,
    vae: Mapping | None = None,
    text_encoder: Mapping | None = None,
) -> DiffusionPipeline:
    """A pipeline from a diffusers pipeline folder (``model_index.json``) or a transformer folder.

    A pipeline folder keeps its own components; only the sampler's class is swapped in, on the
    folder's own noise schedule (so an SD-style scaled-linear model stays scaled-linear). A bare
    network folder (a run's EMA export) or an official ``.pth`` is assembled with the project's ``vae``
    and ``text_encoder`` configs and the configured ``scheduler`` on the run's recorded noise schedule.
    """
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        pipeline = DiffusionPipeline.from_pretrained(folder)
        pipeline.scheduler = with_noise_schedule(scheduler, pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline
    if not (folder / "config.json").is_file() and folder.suffix not in ORIGINAL_SUFFIXES:
        raise FileNotFoundError(f"{folder} is neither a diffusers pipeline (model_index.json), a transformer folder nor a .pth")
    transformer = load_transformer(folder)
    scheduler = with_noise_schedule(scheduler, load_noise_schedule(folder))
    encoder = None
    if not isinstance(transformer, DiTTransformer2DModel):
        encoder = FrozenTextEncoder.from_config(text_encoder)
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
    chunks = range(0, len(conditions), batch_size)
    out = [
        generate(pipeline, conditions[i : i + batch_size], seed=seed + k, **sampling)
        for k, i in enumerate(tqdm(chunks, desc=f"generate {len(conditions)}", disable=not progress))
    ]
    return model_range_to_uint8(torch.cat(out))
