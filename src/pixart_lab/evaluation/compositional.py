"""GenEval-style compositional accuracy on prompts whose scene graphs never occur in training.

GenEval (Ghosh et al., 2023) scores six tasks with an object detector: single object, two objects,
counting, colours, position and colour attribution; the overall score is the mean of the task
accuracies. Here the prompts are dense corpus captions of sharp scenes sampled with a fixed seed,
kept only if their caption content is reserved for evaluation (never a training caption, in any
phrasing: ``reserved_for_evaluation``) and their graph (``scene_signature``) is absent from the
training splits; each also has a fixed free paraphrase (``free_prompt``: no quality phrase,
synonyms, numerals) to test prompts worded as users word them. The detector is the attribute probe.
A task is scored only when every attribute it reads passed the probe's held-out validation
(``TASK_ATTRIBUTES``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pixart_lab.data.scene import Scene, dense_caption, free_prompt, reserved_for_evaluation, sample_scene, scene_signature
from pixart_lab.evaluation.attribute_probe import DetectedObject

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# The probe attributes each task's check depends on.
TASK_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "single_object": ("shape",),
    "two_object": ("shape",),
    "counting": ("shape", "count"),
    "colors": ("shape", "colour"),
    "position": ("shape", "position"),
    "color_attr": ("shape", "colour"),
}
_SCENE_KIND = {
    "single_object": "single",
    "colors": "single",
    "counting": "count",
    "two_object": "relation",
    "position": "relation",
    "color_attr": "relation",
}


@dataclass(frozen=True)
class CompositionalPrompt:
    """A held-out prompt: its task, the scene graph it states, the caption and its free paraphrase."""

    task: str
    prompt: str
    scene: dict[str, Any]
    paraphrase: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "prompt": self.prompt, "scene": self.scene, "paraphrase": self.paraphrase}


def _fits_task(task: str, scene: Scene) -> bool:
    if _SCENE_KIND[task] != "relation":
        return True
    if len(scene.objects) != 2:
        return False
    a, b = scene.objects
    # Two different shapes so each can be found by shape; different colours for attribution.
    return a.shape != b.shape and (task != "color_attr" or a.colour != b.colour)


def signatures(records: Sequence[Any]) -> set[str]:
    """Scene signatures of corpus records (``Record.scene``); records without a scene are ignored."""
    return {scene_signature(Scene.from_dict(r.scene)) for r in records if r.scene}


def build_prompt_set(
    train_signatures: Collection[str], per_task: int, seed: int = 0, size: int = 64, max_tries: int = 100_000
) -> list[CompositionalPrompt]:
    """``per_task`` prompts for each task, from sharp scenes reserved for evaluation whose graph is not
    in ``train_signatures``."""
    rng = np.random.default_rng(seed)
    prompts, seen = [], set(train_signatures)
    for task in TASKS:
        found = 0
        for _ in range(max_tries):
            if found == per_task:
                break
            scene = sample_scene(rng, size, size, kind=_SCENE_KIND[task], quality="clean")
            signature = scene_signature(scene)
            if signature in seen or not _fits_task(task, scene) or not reserved_for_evaluation(scene):
                continue
            seen.add(signature)  # distinct prompts across the whole set
            prompts.append(CompositionalPrompt(task, dense_caption(scene), scene.to_dict(), free_prompt(scene, rng)))
            found += 1
        if found < per_task:
            raise ValueError(f"found only {found} unseen {task} scenes of {per_task} in {max_tries} draws")
    return prompts


def _find(objects: Sequence[DetectedObject], shape: str) -> list[DetectedObject]:
    return [o for o in objects if o.shape == shape]


def _relation_holds(a: DetectedObject, relation: str, b: DetectedObject) -> bool:
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def check(task: str, scene: Mapping[str, Any], detected: Sequence[DetectedObject]) -> bool:
    """Whether the objects detected in an image satisfy the prompt's ``task`` (GenEval's rules)."""
    objects = scene["objects"]
    first = objects[0]
    if task == "single_object":
        return bool(_find(detected, first["shape"]))
    if task == "colors":
        return any(o.colour == first["colour"] for o in _find(detected, first["shape"]))
    if task == "counting":
        return len(_find(detected, first["shape"])) == scene["count"]
    a, b = (_find(detected, o["shape"]) for o in objects[:2])
    if task == "two_object":
        return bool(a and b)
    if task == "color_attr":
        return any(o.colour == objects[0]["colour"] for o in a) and any(o.colour == objects[1]["colour"] for o in b)
    if task == "position":
        relation = scene["relations"][0]["relation"]
        return bool(a and b) and _relation_holds(a[0], relation, b[0])
    raise ValueError(f"unknown compositional task {task!r}; expected one of {TASKS}")


def compositional_accuracy(
    prompts: Sequence[CompositionalPrompt],
    detections: Sequence[Sequence[DetectedObject]],
    valid_attributes: Collection[str],
) -> dict[str, Any]:
    """Per-task accuracy and their mean (``overall``) over the tasks the probe can score.

    ``detections[i]`` are the objects found in the image generated for ``prompts[i]``. Tasks that
    need an attribute outside ``valid_attributes`` are listed under ``not_scored``.
    """
    if len(prompts) != len(detections):
        raise ValueError(f"{len(prompts)} prompts but {len(detections)} detected scenes")
    scored = [t for t in TASKS if set(TASK_ATTRIBUTES[t]) <= set(valid_attributes)]
    results: dict[str, list[bool]] = {t: [] for t in scored}
    for prompt, found in zip(prompts, detections):
        if prompt.task in results:
            results[prompt.task].append(check(prompt.task, prompt.scene, found))
    tasks = {t: float(np.mean(v)) for t, v in results.items() if v}
    return {
        "overall": float(np.mean(list(tasks.values()))) if tasks else None,
        "tasks": tasks,
        "not_scored": [t for t in TASKS if t not in scored],
    }


def chance_accuracy(
    prompts: Sequence[CompositionalPrompt],
    detections: Sequence[Sequence[DetectedObject]],
    valid_attributes: Collection[str],
) -> dict[str, Any]:
    """Expected accuracy when images are paired with a random prompt of the same task.

    The mean of the check over every (prompt, image) pair within a task: what a generator that
    ignores the prompt's content (but draws from the same kind of scene) would score.
    """
    by_task: dict[str, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_task.setdefault(prompt.task, []).append(i)
    scored = [t for t in TASKS if set(TASK_ATTRIBUTES[t]) <= set(valid_attributes) and t in by_task]
    tasks = {
        t: float(np.mean([check(t, prompts[i].scene, detections[j]) for i in by_task[t] for j in by_task[t]]))
        for t in scored
    }
    return {"overall": float(np.mean(list(tasks.values()))) if tasks else None, "tasks": tasks}


def shuffled_within_task(prompts: Sequence[CompositionalPrompt]) -> list[int]:
    """Index permutation pairing every prompt with the next prompt of the same task (a derangement)."""
    order = list(range(len(prompts)))
    by_task: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_task.setdefault(p.task, []).append(i)
    for members in by_task.values():
        for k, i in enumerate(members):
            order[i] = members[(k + 1) % len(members)]
    return order

