"""One evaluation of a generator: FID beside its floor, CLIP score and compositional accuracy.

Held-out images are split in two halves: the generator draws from the captions (class labels for a
class-conditional model) of half A, and FID compares its images with the real images of half B; the
real-vs-real floor is A against B, what a perfect generator would score with this many images. The
reference set's features, the CLIP model and the probe are loaded once, so the same suite serves the
``evaluate`` stage and the periodic evaluation during training.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from pixart_lab.data.records import Record
from pixart_lab.data.transforms import load_images
from pixart_lab.evaluation.clip_model import ClipImageFeatures, clip_score_model
from pixart_lab.evaluation.compositional import TASKS, CompositionalPrompt, compositional_accuracy, shuffled_within_task
from pixart_lab.evaluation.evaluators import CompositionalEvaluator
from pixart_lab.evaluation.metrics import CleanFidReference, FidReference, clip_score

Generate = Callable[[Sequence], torch.Tensor]  # conditions -> uint8 images


class RecordSource(Protocol):
    """A reader of ``pixart_lab.data.readers``: anything that lists ``Record``s."""

    def records(self) -> list[Record]: ...


@dataclass
class HeldOutHalves:
    """``n`` held-out images in each half: A's conditions drive generation, B is FID's reference."""

    images_a: torch.Tensor
    images_b: torch.Tensor
    captions_a: list[str]
    labels_a: list[int]

    @classmethod
    def load(cls, records: Sequence[Record], n: int, image_size: int, progress: bool = False) -> HeldOutHalves:
        images, kept = load_images(list(records)[: 2 * n], image_size, image_size, progress=progress)
        if len(kept) < 2 * n:
            raise ValueError(f"an FID of {n} images needs {2 * n} usable held-out images, found {len(kept)}")
        first = kept[:n]
        return cls(images[:n], images[n:], [r.dense_caption for r in first], [-1 if r.label is None else int(r.label) for r in first])

    def conditions(self, text_conditioned: bool) -> list:
        return list(self.captions_a) if text_conditioned else list(self.labels_a)


def fid_reference(fid_cfg: Mapping[str, Any], reference: torch.Tensor, clip: str | None) -> Callable[[torch.Tensor], float]:
    """FID against ``reference`` with the configured backend: torchmetrics on the CLIP image tower, or clean-fid."""
    backend = fid_cfg["backend"]
    if backend == "torchmetrics":
        return FidReference(reference, ClipImageFeatures.from_pretrained(clip), fid_cfg.get("batch_size", 250))
    if backend == "clean_fid":
        return CleanFidReference(reference, fid_cfg.get("inception_dir"))
    raise ValueError(f"eval.fid.backend={backend!r}: expected torchmetrics or clean_fid")


def prompts_per_task(prompts: Sequence[CompositionalPrompt], per_task: int | None) -> list[CompositionalPrompt]:
    """The first ``per_task`` prompts of every task (all of them for None), in task order."""
    if per_task is None:
        return list(prompts)
    return [p for task in TASKS for p in [q for q in prompts if q.task == task][:per_task]]


class QualitySuite:
    """FID (to half B), CLIP score (against half A's captions) and compositional accuracy of a generator
    (with ``free_phrasing``, also from the prompts' free paraphrases)."""

    def __init__(
        self,
        heldout: HeldOutHalves,
        fid_cfg: Mapping[str, Any],
        clip: str | None = None,
        evaluators_dir: str | None = None,
        compositional_per_task: int | None = None,
        free_phrasing: bool = False,
    ):
        self.heldout, self.free_phrasing = heldout, free_phrasing
        self.fid = fid_reference(fid_cfg, heldout.images_b, clip)
        self.clip_fn = clip_score_model(clip) if clip else None
        self.compositional = None
        if evaluators_dir:
            evaluator = CompositionalEvaluator.load(evaluators_dir)
            evaluator.prompts = prompts_per_task(evaluator.prompts, compositional_per_task)
            self.compositional = evaluator

    def floor(self) -> float:
        """Real-vs-real FID: half A against half B."""
        return self.fid(self.heldout.images_a)

    def real_clip_score(self) -> float:
        return clip_score(self.heldout.images_a, self.heldout.captions_a, self.clip_fn)

    def __call__(self, generate: Generate, text_conditioned: bool) -> tuple[dict[str, Any], torch.Tensor]:
        """Metrics of ``generate`` and the images to show (compositional prompts if any, else FID images)."""
        conditions = self.heldout.conditions(text_conditioned)
        fake = generate(conditions)
        metrics: dict[str, Any] = {"fid": self.fid(fake), "images": len(fake), "size": list(fake.shape[-2:])}
        shown = fake
        if text_conditioned and self.clip_fn is not None:
            metrics["clip_score"] = clip_score(fake, conditions, self.clip_fn)
        if text_conditioned and self.compositional is not None:
            evaluator = self.compositional
            composed = generate([p.prompt for p in evaluator.prompts])
            detected = evaluator.probe.read(composed)
            metrics["compositional"] = compositional_accuracy(evaluator.prompts, detected, evaluator.valid_attributes)
            metrics["compositional"]["prompts"] = len(evaluator.prompts)
            # The generator's own baseline: its images judged against another prompt of the same task.
            # What the model scores without following the prompt's content (unlike a chance that pairs
            # sharp renders with random prompts, it carries the generator's own failure to draw).
            order = shuffled_within_task(evaluator.prompts)
            metrics["compositional_shuffled"] = compositional_accuracy(
                evaluator.prompts, [detected[j] for j in order], evaluator.valid_attributes
            )
            if self.free_phrasing:  # the same scenes asked for in a user's words
                free = generate([p.paraphrase for p in evaluator.prompts])
                metrics["compositional_free_phrasing"] = compositional_accuracy(
                    evaluator.prompts, evaluator.probe.read(free), evaluator.valid_attributes
                )
            shown = composed
        return metrics, shown
