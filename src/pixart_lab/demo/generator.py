"""What the web demo generates: the settings a model offers, their validation, one generation.

No Gradio here: the page (``demo/app.py``) shows what this module offers and reports its errors.
A text-conditioned PixArt pipeline takes a prompt and a negative prompt; a class-conditional DiT
(stage 1) takes one of its class names instead, since ``DiTPipeline`` conditions on labels only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from diffusers import DiffusionPipeline, DiTPipeline, SchedulerMixin
from hydra.utils import instantiate
from PIL import Image

from pixart_lab.data.buckets import aspect_ratio_table
from pixart_lab.data.scene import NUM_CLASSES, class_name
from pixart_lab.data.transforms import model_range_to_uint8
from pixart_lab.diffusion.sampling import generate, with_noise_schedule


class SettingsError(ValueError):
    """A setting the user can correct; its message is shown on the page as it is."""


@dataclass(frozen=True)
class SamplerChoice:
    """One ``conf/sampler`` entry: the scheduler and its default steps and guidance."""

    label: str
    scheduler: SchedulerMixin
    steps: int
    guidance_scale: float


@dataclass(frozen=True)
class Limits:
    """Inclusive ranges the page accepts (``conf/demo.yaml: limits``)."""

    steps: tuple[int, int] = (1, 200)
    guidance_scale: tuple[float, float] = (1.0, 20.0)
    seed: tuple[int, int] = (0, 2**31 - 1)


@dataclass(frozen=True)
class Settings:
    """One request, as the page's inputs send it (``prompt`` is a class name for a DiT)."""

    prompt: str
    sampler: str
    steps: float
    guidance_scale: float
    seed: float
    size: str
    negative_prompt: str = ""


@dataclass(frozen=True)
class Result:
    image: Image.Image
    caption: str  # the settings that made the image, shown under it
    seconds: float


def sampler_choices(samplers: Mapping) -> dict[str, SamplerChoice]:
    """``{name: SamplerChoice}`` from ``conf/demo.yaml: samplers`` (``conf/sampler`` entries plus a label)."""
    return {
        name: SamplerChoice(entry.get("label", name), instantiate(entry["scheduler"]), int(entry["steps"]), float(entry["guidance_scale"]))
        for name, entry in samplers.items()
    }


def vae_scale_factor(pipeline: DiffusionPipeline) -> int:
    return 2 ** (len(pipeline.vae.config.block_out_channels) - 1)


def is_multi_scale(pipeline: DiffusionPipeline) -> bool:
    """A PixArt transformer with resolution / aspect-ratio micro-conditions (PixArt-MS)."""
    config = pipeline.transformer.config
    if isinstance(pipeline, DiTPipeline):
        return False
    flag = config.get("use_additional_conditions")
    return config.sample_size == 128 if flag is None else bool(flag)  # diffusers' rule when unset


def native_side(pipeline: DiffusionPipeline) -> int:
    """The square side in pixels the model was trained at.

    diffusers reads it as ``sample_size`` latents. A PixArt-MS transformer says ``sample_size``
    128 (the pipeline feeds micro-conditions only then) and was trained at twice the grid its
    position embeddings are built on (``sample_size / interpolation_scale``): PixArt-alpha's 1024-MS
    model after 512 px pre-training, the embedded stage 3 at 128 px after stage 2's 64 px.
    """
    config = pipeline.transformer.config
    latent = config.sample_size
    if is_multi_scale(pipeline):
        scale = config.get("interpolation_scale") or max(config.sample_size // 64, 1)
        latent = round(2 * config.sample_size / scale)
    return latent * vae_scale_factor(pipeline)


def size_choices(pipeline: DiffusionPipeline, aspect_ratios: Sequence[float], side: int | None = None) -> dict[str, tuple[int, int]]:
    """``{"HxW": (height, width)}`` the model can generate: its own square, and for a PixArt-MS model
    the aspect buckets of that area (sides multiples of VAE factor x patch size, as in training).

    A model without the aspect-ratio micro-condition was trained on squares only; a DiT pipeline
    takes no size at all.
    """
    side = side or native_side(pipeline)
    if is_multi_scale(pipeline):
        multiple = vae_scale_factor(pipeline) * pipeline.transformer.config.patch_size
        sizes = list(aspect_ratio_table(side, aspect_ratios, multiple).values())
    else:
        sizes = [(side, side)]
    return {f"{h}x{w}": (h, w) for h, w in sizes}


def class_names(pipeline: DiTPipeline) -> dict[str, int]:
    """``{name: label}``: the pipeline's own ``id2label`` if it has one, else the embedded corpus's classes."""
    return dict(pipeline.labels) or {class_name(i): i for i in range(NUM_CLASSES)}


def _whole(value, name: str, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if value is None or not float(value).is_integer() or not low <= value <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {'nothing' if value is None else value}")
    return int(value)


class DemoModel:
    """A loaded pipeline and the settings the page offers for it."""

    def __init__(
        self,
        pipeline: DiffusionPipeline,
        samplers: Mapping[str, SamplerChoice],
        sizes: Mapping[str, tuple[int, int]],
        limits: Limits = Limits(),
        source: str = "",
    ) -> None:
        if not samplers or not sizes:
            raise ValueError("a demo model needs at least one sampler and one size")
        self.pipeline = pipeline
        self.samplers = dict(samplers)
        self.sizes = dict(sizes)
        self.limits = limits
        self.source = source
        self.classes = class_names(pipeline) if isinstance(pipeline, DiTPipeline) else None
        self.trained_schedule = dict(pipeline.scheduler.config)  # what every sampler runs on

    @property
    def default_size(self) -> str:
        """The square if there is one (the model's own size), else the first bucket."""
        return next((key for key, (h, w) in self.sizes.items() if h == w), next(iter(self.sizes)))

    def describe(self) -> str:
        kind = "class-conditional DiT" if self.classes is not None else "text-to-image PixArt"
        if is_multi_scale(self.pipeline):
            kind += " with aspect-ratio micro-conditions"
        params = sum(p.numel() for p in self.pipeline.transformer.parameters()) / 1e6
        return f"`{self.source}`: {kind}, {params:.1f} M transformer parameters, sizes {', '.join(self.sizes)}"

    def validate(self, settings: Settings) -> dict:
        """The generation arguments for ``settings``, or a ``SettingsError`` naming the bad one."""
        prompt = (settings.prompt or "").strip()
        if self.classes is not None:
            if prompt not in self.classes:
                raise SettingsError(f"class {prompt!r} is not one of the model's {len(self.classes)} classes")
        elif not prompt:
            raise SettingsError("enter a prompt: this model generates from text")
        if settings.sampler not in self.samplers:
            raise SettingsError(f"sampler {settings.sampler!r} is not one of {', '.join(self.samplers)}")
        low, high = self.limits.guidance_scale
        guidance = settings.guidance_scale
        if guidance is None or not math.isfinite(guidance) or not low <= guidance <= high:
            raise SettingsError(f"guidance scale must be from {low} to {high}, got {'nothing' if guidance is None else guidance}")
        if settings.size not in self.sizes:
            raise SettingsError(f"size {settings.size!r} is not available for this model; choose one of {', '.join(self.sizes)}")
        height, width = self.sizes[settings.size]
        return dict(
            condition=self.classes[prompt] if self.classes is not None else prompt,
            negative_prompt=(settings.negative_prompt or "").strip(),
            sampler=settings.sampler,
            steps=_whole(settings.steps, "steps", self.limits.steps),
            guidance_scale=float(guidance),
            seed=_whole(settings.seed, "seed", self.limits.seed),
            height=height,
            width=width,
        )

    def caption(self, prompt: str, args: Mapping) -> str:
        """The settings that made an image in one line, shortest first (a thumbnail shows the start)."""
        parts = [
            f"seed {args['seed']}",
            f"{args['height']}x{args['width']}",
            self.samplers[args["sampler"]].label,
            f"{args['steps']} steps",
            f"CFG {args['guidance_scale']:g}",
            f"{prompt!r}" if self.classes is None else f"class {prompt}",
        ]
        if args["negative_prompt"]:
            parts.append(f"negative {args['negative_prompt']!r}")
        return " · ".join(parts)

    def generate(self, settings: Settings) -> Result:
        """One image for ``settings`` (validated first; the sampler runs on the model's noise schedule)."""
        args = self.validate(settings)
        start = time.perf_counter()
        self.pipeline.scheduler = with_noise_schedule(self.samplers[args["sampler"]].scheduler, self.trained_schedule)
        images = generate(
            self.pipeline, [args["condition"]], steps=args["steps"], guidance_scale=args["guidance_scale"], seed=args["seed"],
            height=args["height"], width=args["width"], negative_prompt=args["negative_prompt"],
        )  # fmt: skip
        pixels = model_range_to_uint8(images[0]).permute(1, 2, 0).numpy()
        return Result(Image.fromarray(pixels), self.caption(settings.prompt.strip(), args), time.perf_counter() - start)
