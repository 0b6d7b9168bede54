"""DreamBooth's three questions, asked of the base and the fine-tuned model with the same prompts and seeds.

* **Subject fidelity** (DreamBooth's CLIP-I / DINO): mean cosine similarity between image embeddings of
  the generations for "<identifier> <class>" prompts and every subject image, in the CLIP image tower
  of the embedded evaluator (DINO's CLS embedding when its weights are given), and in the same tower
  with each image's plain-background embedding removed (:class:`ObjectFeatures`), which unlike plain
  CLIP similarity does not score an empty image like the subject.
* **Prompt fidelity**: CLIP score of those generations against their prompt without the identifier
  (the evaluator's text tower never saw the identifier), with the same references as subject
  fidelity: a new subject is no plain "circle", so even its perfect rendering scores below the base
  model's circles and blobs; and compositional checks for prompts that
  place the subject relative to a second object: the probe's background, the GenEval position rule
  through the attribute probe, and the same relation read from pixels (:func:`pixel_relation`).
* **Class prior**: generations for the class prompt alone. Their Fréchet distance to base-model images
  from other seeds (for the base model itself: the seed-to-seed floor), their paired similarity to the
  base model's (same prompt, same seed; 1 = unchanged) and their similarity to the subject images,
  which should stay where the base model had it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pixart_lab.data.scene import BACKGROUNDS, COLOURS
from pixart_lab.evaluation.attribute_probe import CellProbe, DetectedObject

# A pixel belongs to a colour when within this RGB distance of it; the corpus palette's closest pair
# (red, orange) is 99 apart, every background at least 110 from every object colour.
COLOUR_TOLERANCE = 60.0
MIN_PIXELS = 4  # of 64 x 64: a small corpus object covers ~60


def image_embeddings(extractor: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised embeddings of uint8 images [N, 3, H, W] by ``extractor`` (CLIP image tower, DINO)."""
    features = torch.cat([extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    return F.normalize(features.float(), dim=-1)


def mean_similarity(a: torch.Tensor, b: torch.Tensor, exclude_diagonal: bool = False) -> float:
    """Mean cosine similarity over all pairs of rows of two normalised embedding sets.

    ``exclude_diagonal`` (a and b the same set): leave out each row's similarity to itself.
    """
    sims = a @ b.T
    if exclude_diagonal:
        n = sims.shape[0]
        if n < 2:
            raise ValueError("similarity within a set needs at least two images")
        return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))
    return float(sims.mean())


def paired_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of row i of ``a`` with row i of ``b`` (same prompt, same seed)."""
    if a.shape != b.shape:
        raise ValueError(f"paired embeddings differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a * b).sum(-1).mean())


def background_colours(images: torch.Tensor) -> torch.Tensor:
    """The median colour of each uint8 image [N, 3, H, W] -> [N, 3]: its background, which covers most of it."""
    return images.flatten(2).float().median(dim=-1).values.round().to(torch.uint8)


def without_objects(images: torch.Tensor, tolerance: float = COLOUR_TOLERANCE) -> torch.Tensor:
    """Each uint8 image with its object pixels (``tolerance`` or farther from its background colour)
    painted in the background colour: the background as drawn, noise and artefacts included. An image
    without objects comes back unchanged."""
    colour = background_colours(images)
    objects = (colour_distance(images, colour) >= tolerance).unsqueeze(1)
    return torch.where(objects, colour[:, :, None, None].expand_as(images), images)


class ObjectFeatures(nn.Module):
    """``features(image) - features(image without its objects)``: what the objects add to an image's embedding.

    Measured on this corpus: the CLIP image tower puts the ring (a shape it never saw) close
    to the empty background it stands on, so plain CLIP similarity scores an empty image nearly as
    high as the subject itself. Generated images add another trap: their backgrounds carry noise and
    artefacts the tower reads as content, so subtracting a *plain* background left the base model's
    empty generations a residual as large as the subject's (similarity 0.43 to it). Subtracting the
    image with its objects painted over removes the background as drawn: an image without objects
    scores exactly 0 (a zero vector), however noisy its background (``references`` in
    ``metrics/dreambooth.json`` calibrate the rest).
    """

    def __init__(self, features: nn.Module, tolerance: float = COLOUR_TOLERANCE):
        super().__init__()
        self.features, self.tolerance = features, tolerance

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images).float() - self.features(without_objects(images, self.tolerance)).float()


class DinoImageFeatures(nn.Module):
    """DINO's CLS embedding (transformers ``AutoModel`` + image processor from a local folder)."""

    def __init__(self, model: nn.Module, processor):
        super().__init__()
        self.model, self.processor = model.eval(), processor

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        inputs = self.processor(images=list(images), return_tensors="pt")
        return self.model(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 0]

    @classmethod
    def from_pretrained(cls, path: str) -> DinoImageFeatures:
        from transformers import AutoImageProcessor, AutoModel

        from pixart_lab.evaluation.clip_model import EvaluatorMissingError

        try:
            return cls(AutoModel.from_pretrained(path), AutoImageProcessor.from_pretrained(path))
        except OSError as e:
            raise EvaluatorMissingError(
                f"DINO weights not found at {path}; download e.g. facebook/dino-vits16 on a machine with network "
                "access and give eval.dino that folder (null: CLIP image features only)"
            ) from e


@dataclass(frozen=True)
class Composition:
    """A prompt placing the subject relative to a reference object: "<subject> left of a red square"."""

    prompt: str  # with "{subject}" where "<identifier> <class>" goes
    relation: str  # the subject's relation to the reference: left of, right of, above, below
    reference_shape: str
    reference_colour: str
    background: str

    def __post_init__(self) -> None:
        if self.relation not in _AXIS:
            raise ValueError(f"relation {self.relation!r}: expected one of {sorted(_AXIS)}")
        if self.reference_colour not in COLOURS or self.background not in BACKGROUNDS:
            raise ValueError(f"unknown colour {self.reference_colour!r} or background {self.background!r}")


# relation of the subject to the reference -> (axis of the image, sign of subject - reference)
_AXIS = {"left of": (1, -1), "right of": (1, 1), "above": (0, -1), "below": (0, 1)}


def colour_distance(images: torch.Tensor, rgb: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """RGB distance of every pixel of uint8 images [N, 3, H, W] to ``rgb`` (one colour, or one per image
    [N, 3]): [N, H, W]."""
    return (images.float() - torch.as_tensor(rgb, dtype=torch.float32).reshape(-1, 3, 1, 1)).norm(dim=1)


def _centroid(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (row, col) of the True pixels of masks [N, H, W], and the pixel counts."""
    n, h, w = mask.shape
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    count = mask.sum((1, 2)).float()
    denom = count.clamp(min=1)
    return torch.stack([(mask * rows).sum((1, 2)) / denom, (mask * cols).sum((1, 2)) / denom], 1), count


def pixel_relation(images: torch.Tensor, composition: Composition, tolerance: float = COLOUR_TOLERANCE) -> torch.Tensor:
    """Whether the relation holds between the reference's pixels and the subject's, per image [N] bool.

    Reference: pixels within ``tolerance`` of its colour. Subject: every other pixel far from the
    background colour. Both need ``MIN_PIXELS``; the relation compares their centroids. It reads
    blobs as well as shapes, so it judges placement even where the probe cannot read the shape.
    """
    reference = colour_distance(images, COLOURS[composition.reference_colour]) < tolerance
    subject = (colour_distance(images, BACKGROUNDS[composition.background]) >= tolerance) & ~reference
    (ref_pos, ref_n), (sub_pos, sub_n) = _centroid(reference), _centroid(subject)
    axis, sign = _AXIS[composition.relation]
    ordered = sign * (sub_pos[:, axis] - ref_pos[:, axis]) > 0
    return ordered & (ref_n >= MIN_PIXELS) & (sub_n >= MIN_PIXELS)


def probe_relation(detected: Sequence[DetectedObject], composition: Composition) -> bool:
    """GenEval's position rule through the probe: the reference object is found, and another object stands in the relation to it."""
    references = [o for o in detected if (o.shape, o.colour) == (composition.reference_shape, composition.reference_colour)]
    axis, sign = _AXIS[composition.relation]
    for ref in references:
        for other in detected:
            if other is not ref and sign * ((other.row, other.col)[axis] - (ref.row, ref.col)[axis]) > 0:
                return True
    return False


# The probe attributes each check reads (validated on held-out images by train_evaluators).
CHECK_ATTRIBUTES = {"background": ("background",), "probe_relation": ("shape", "colour", "position")}


@torch.no_grad()
def composition_scores(
    images: torch.Tensor, compositions: Sequence[Composition], probe: CellProbe, valid_attributes: Collection[str]
) -> dict[str, float | None]:
    """Accuracy of each check over ``images[i]`` generated for ``compositions[i]``.

    A probe check whose attributes failed the probe's validation is not scored (None).
    """
    if len(images) != len(compositions):
        raise ValueError(f"{len(images)} images for {len(compositions)} compositional prompts")
    backgrounds = probe(images)["background"].argmax(-1).tolist()
    detections = probe.read(images)
    pixel = torch.cat([pixel_relation(images[i : i + 1], c) for i, c in enumerate(compositions)])
    scores = {
        "background": sum(list(BACKGROUNDS)[b] == c.background for b, c in zip(backgrounds, compositions)) / len(compositions),
        "probe_relation": sum(probe_relation(d, c) for d, c in zip(detections, compositions)) / len(compositions),
        "pixel_relation": float(pixel.float().mean()),
    }
    for check, needed in CHECK_ATTRIBUTES.items():
        if not set(needed) <= set(valid_attributes):
            scores[check] = None
    return scores


def compositions_from(config: Sequence[Mapping]) -> list[Composition]:
    return [Composition(**dict(c)) for c in config]


@dataclass
class DreamBoothPrompts:
    """The evaluation prompts ("{subject}" marks where "<identifier> <class>" or the class alone goes)."""

    subject: str  # "sks circle"
    class_noun: str  # "circle"
    templates: Sequence[str]  # subject fidelity and CLIP score; with the class noun alone: the class prior
    compositions: Sequence[Composition]
    per_prompt: int  # images (seeds) per prompt

    def expand(self, templates: Sequence[str], words: str) -> list[str]:
        return [t.format(subject=words) for t in templates for _ in range(self.per_prompt)]

    def sets(self) -> dict[str, list[str]]:
        """Prompt lists: identifier prompts, compositional prompts, and the class prompts without identifier."""
        return {
            "subject": self.expand(self.templates, self.subject),
            "composition": self.expand([c.prompt for c in self.compositions], self.subject),
            "class": self.expand(self.templates, self.class_noun),
        }

    def without_identifier(self, prompts: Sequence[str]) -> list[str]:
        return [p.replace(self.subject, self.class_noun) for p in prompts]


def generate_comparison(
    pipelines: Mapping[str, object], prompts: DreamBoothPrompts, generate: Callable, seed: int, floor_seed: int
) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """Every model's images of every prompt set from the same seeds, and the first (base) model's class
    images from ``floor_seed``; ``generate(pipeline, prompts, seed)`` returns uint8 images."""
    sets = prompts.sets()
    images = {model: {name: generate(pipeline, texts, seed) for name, texts in sets.items()} for model, pipeline in pipelines.items()}
    return images, generate(next(iter(pipelines.values())), sets["class"], floor_seed)


def compare_models(
    generations: Mapping[str, Mapping[str, torch.Tensor]],
    floor_class_images: torch.Tensor,
    subject_images: torch.Tensor,
    prompts: DreamBoothPrompts,
    extractors: Mapping[str, nn.Module],
    clip_score_fn,
    probe: CellProbe,
    valid_attributes: Collection[str],
    references: Mapping[str, torch.Tensor] | None = None,
) -> dict:
    """Subject fidelity, prompt fidelity and class-prior figures of every model in ``generations``.

    ``generations[model][set]`` are uint8 images for ``prompts.sets()[set]`` (same seeds for every
    model; the first model is the base); ``floor_class_images`` are the base model's class images
    from other seeds. ``extractors`` name the image features subject similarity is measured in (the
    first one, the CLIP image tower, is also the Fréchet feature space); ``references`` are image
    sets whose subject similarity shows what the figures mean (e.g. the subject in unseen poses,
    empty backgrounds).
    """
    from pixart_lab.evaluation.metrics import clip_score, frechet_distance

    sets = prompts.sets()
    models = list(generations)
    base = models[0]
    compositions = [c for c in prompts.compositions for _ in range(prompts.per_prompt)]
    fidelity, drift = {}, {"subject_similarity": {}, "clip_score": {}}
    for name, extractor in extractors.items():
        subject = image_embeddings(extractor, subject_images)
        similarity = lambda images: mean_similarity(image_embeddings(extractor, images), subject)  # noqa: E731
        embedded = {model: image_embeddings(extractor, generations[model]["subject"]) for model in models}
        fidelity[name] = {model: mean_similarity(embedded[model], subject) for model in models}
        fidelity[name]["by_prompt"] = {
            model: [mean_similarity(chunk, subject) for chunk in embedded[model].split(prompts.per_prompt)] for model in models
        }
        fidelity[name]["references"] = {"subject_images": mean_similarity(subject, subject, exclude_diagonal=True)}
        fidelity[name]["references"].update({ref: similarity(images) for ref, images in (references or {}).items()})
        drift["subject_similarity"][name] = {model: similarity(generations[model]["class"]) for model in models}
    text = prompts.without_identifier(sets["subject"] + sets["composition"])
    subject_text = prompts.without_identifier(sets["subject"])
    prompt_fidelity = {"clip_score": {}, "clip_score_subject_prompts": {}, "composition": {}}
    for model in models:
        images = generations[model]
        prompt_fidelity["clip_score"][model] = clip_score(torch.cat([images["subject"], images["composition"]]), text, clip_score_fn)
        prompt_fidelity["clip_score_subject_prompts"][model] = clip_score(images["subject"], subject_text, clip_score_fn)
        prompt_fidelity["composition"][model] = composition_scores(images["composition"], compositions, probe, valid_attributes)
        drift["clip_score"][model] = clip_score(images["class"], sets["class"], clip_score_fn)
    if references:  # one image per subject prompt: what the subject prompts' CLIP score is for them
        prompt_fidelity["clip_score_subject_prompts"]["references"] = {
            ref: clip_score(images, subject_text[:: prompts.per_prompt], clip_score_fn) for ref, images in references.items()
        }
    # Every model's class images against the base model's from other seeds: the base's own value is
    # the seed-to-seed floor, a fine-tuned model's excess over it is its drift.
    features = next(iter(extractors.values()))
    drift["frechet_to_base_other_seeds"] = {m: frechet_distance(floor_class_images, generations[m]["class"], features) for m in models}
    base_class = image_embeddings(features, generations[base]["class"])
    drift["paired_similarity_to_base"] = {
        m: paired_similarity(base_class, image_embeddings(features, generations[m]["class"])) for m in models[1:]
    }
    return {"subject_fidelity": fidelity, "prompt_fidelity": prompt_fidelity, "class_prior": drift,
            "images": {k: len(v) for k, v in sets.items()}}  # fmt: skip


def comparison_rows(
    subject_images: torch.Tensor, generations: Mapping[str, Mapping[str, torch.Tensor]], prompts: DreamBoothPrompts, width: int = 24
) -> list[tuple[str, torch.Tensor]]:
    """Rows of the comparison grid: the subject images, then every subject prompt and the first prompt
    of the other sets, every model in turn."""
    import textwrap

    rows = [("subject images", subject_images)]
    n = prompts.per_prompt
    for name, texts in prompts.sets().items():
        starts = range(0, len(texts), n) if name == "subject" else [0]
        for start in starts:
            caption = textwrap.fill(texts[start].removeprefix("a sharp image of "), width)
            rows += [(f"{model}:\n{caption}", images[name][start : start + n]) for model, images in generations.items()]
    return rows
