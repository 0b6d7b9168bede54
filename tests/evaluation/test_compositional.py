import numpy as np
import pytest

from pixart_lab.data.scene import Scene, dense_caption, reserved_for_evaluation, sample_scene, scene_signature
from pixart_lab.evaluation.attribute_probe import DetectedObject
from pixart_lab.evaluation.compositional import (
    TASKS,
    build_prompt_set,
    chance_accuracy,
    check,
    compositional_accuracy,
    shuffled_within_task,
)

ALL_ATTRIBUTES = ("shape", "colour", "count", "position")


def truth(scene: dict) -> list[DetectedObject]:
    """What a perfect probe reads from the rendering of ``scene``."""
    return [DetectedObject(o["shape"], o["colour"], o["row"], o["col"]) for o in scene["objects"]]


@pytest.fixture(scope="module")
def prompts():
    rng = np.random.default_rng(1)
    seen = {scene_signature(sample_scene(rng, 64, 64)) for _ in range(3000)}
    return build_prompt_set(seen, per_task=20, seed=0), seen


def test_prompt_set_covers_every_task_with_unseen_distinct_sharp_scenes(prompts):
    prompts, seen = prompts
    assert [p.task for p in prompts] == [t for t in TASKS for _ in range(20)]
    signatures = [scene_signature(Scene.from_dict(p.scene)) for p in prompts]
    assert len(set(signatures)) == len(prompts) and not set(signatures) & seen
    assert all(p.prompt.startswith("a sharp image of") for p in prompts)
    for p in prompts:
        if p.task in ("two_object", "position", "color_attr"):
            a, b = p.scene["objects"]
            assert len(p.scene["objects"]) == 2 and a["shape"] != b["shape"]
    assert all(p.scene["objects"][0]["colour"] != p.scene["objects"][1]["colour"] for p in prompts if p.task == "color_attr")


def test_prompts_are_reserved_captions_with_a_free_paraphrase(prompts):
    prompts, _ = prompts
    for p in prompts:
        scene = Scene.from_dict(p.scene)
        assert reserved_for_evaluation(scene), p.prompt  # never a training caption, in any phrasing
        assert p.prompt == dense_caption(scene) and p.paraphrase != p.prompt
        assert not p.paraphrase.startswith("a sharp image of"), p.paraphrase
        for o in scene.objects:
            assert f"{o.colour} {o.shape}" in p.paraphrase, p.paraphrase


def test_prompt_set_is_deterministic(prompts):
    prompts, seen = prompts
    assert [p.prompt for p in build_prompt_set(seen, per_task=20, seed=0)] == [p.prompt for p in prompts]


def test_true_scenes_score_one_and_shuffled_prompts_score_near_chance(prompts):
    prompts, _ = prompts
    detections = [truth(p.scene) for p in prompts]
    real = compositional_accuracy(prompts, detections, ALL_ATTRIBUTES)
    assert real["overall"] == 1.0 and set(real["tasks"]) == set(TASKS) and real["not_scored"] == []
    order = shuffled_within_task(prompts)
    assert all(prompts[i].task == prompts[j].task and i != j for i, j in enumerate(order))
    shuffled = compositional_accuracy(prompts, [detections[j] for j in order], ALL_ATTRIBUTES)
    chance = chance_accuracy(prompts, detections, ALL_ATTRIBUTES)
    assert shuffled["overall"] < 0.35 and chance["overall"] < 0.35
    assert abs(shuffled["overall"] - chance["overall"]) < 0.1


def test_each_check_rejects_the_error_it_is_about():
    two = {"objects": [{"shape": "circle", "colour": "red", "row": 0, "col": 0},
                       {"shape": "star", "colour": "blue", "row": 0, "col": 2}],
           "relations": [{"subject": 0, "relation": "left of", "reference": 1}], "count": 2}  # fmt: skip
    good = truth(two)
    assert all(check(t, two, good) for t in ("two_object", "position", "color_attr"))
    swapped_sides = [DetectedObject("circle", "red", 0, 2), DetectedObject("star", "blue", 0, 0)]
    assert check("two_object", two, swapped_sides) and not check("position", two, swapped_sides)
    swapped_colours = [DetectedObject("circle", "blue", 0, 0), DetectedObject("star", "red", 0, 2)]
    assert check("position", two, swapped_colours) and not check("color_attr", two, swapped_colours)
    assert not check("two_object", two, good[:1])
    three = {"objects": [{"shape": "star", "colour": "orange", "row": r, "col": 1} for r in range(3)], "count": 3}
    assert check("counting", three, truth(three)) and not check("counting", three, truth(three)[:2])
    assert not check("counting", three, truth(three) + [DetectedObject("star", "orange", 0, 0)])
    one = {"objects": [{"shape": "triangle", "colour": "green", "row": 1, "col": 1}], "count": 1}
    wrong_colour = [DetectedObject("triangle", "cyan", 1, 1)]
    assert check("single_object", one, wrong_colour) and not check("colors", one, wrong_colour)


def test_tasks_needing_an_attribute_that_failed_validation_are_not_scored(prompts):
    prompts, _ = prompts
    result = compositional_accuracy(prompts, [truth(p.scene) for p in prompts], ("shape", "colour"))
    assert set(result["not_scored"]) == {"counting", "position"}
    assert set(result["tasks"]) == {"single_object", "two_object", "colors", "color_attr"}
    with pytest.raises(ValueError, match="3 prompts but 2 detected"):
        compositional_accuracy(prompts[:3], [[], []], ALL_ATTRIBUTES)
