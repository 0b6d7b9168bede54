"""DreamBooth metrics: each check passes on renderings that satisfy the prompt and fails on ones that do not."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart_lab.data.render import render_scene
from pixart_lab.data.scene import Scene, SceneObject
from pixart_lab.data.transforms import to_uint8_chw
from pixart_lab.evaluation.attribute_probe import DetectedObject
from pixart_lab.evaluation.dreambooth import (
    Composition,
    DinoImageFeatures,
    DreamBoothPrompts,
    mean_similarity,
    paired_similarity,
    pixel_relation,
    probe_relation,
)

# subject cell, reference cell for each relation "subject <relation> reference"
CELLS = {"left of": ((1, 0), (1, 2)), "right of": ((0, 2), (2, 0)), "above": ((0, 1), (2, 1)), "below": ((2, 0), (1, 0))}


def composition(relation: str) -> Composition:
    return Composition("a large {subject} " + relation + " a large red square on a white background", relation, "square", "red", "white")


def render(subject_cell, reference_cell, subject_colour="orange") -> torch.Tensor:
    """A sharp corpus scene: a subject-coloured circle and the red square reference, on white."""
    objects = []
    for (row, col), shape, colour in ((subject_cell, "circle", subject_colour), (reference_cell, "square", "red")):
        x, y, r = (col + 0.5) * 64 / 3, (row + 0.5) * 64 / 3, 8.5
        objects.append(SceneObject(shape, colour, "large", row, col, x / 64, y / 64, (x - r, y - r, x + r, y + r)))
    scene = Scene(tuple(objects), "white", "clean", 64, 64, "relation")
    return to_uint8_chw(render_scene(scene, np.random.default_rng(0)))[None]


@pytest.mark.parametrize("relation", list(CELLS))
def test_pixel_relation_holds_for_the_right_layout_and_fails_for_the_swapped_one(relation):
    subject, reference = CELLS[relation]
    assert pixel_relation(render(subject, reference), composition(relation)).tolist() == [True]
    assert pixel_relation(render(reference, subject), composition(relation)).tolist() == [False]
    assert pixel_relation(render(subject, reference, subject_colour="cyan"), composition(relation)).tolist() == [True]


def test_pixel_relation_needs_both_objects():
    blank = torch.full((1, 3, 64, 64), 245, dtype=torch.uint8)  # the white background only
    assert pixel_relation(blank, composition("left of")).tolist() == [False]


def test_probe_relation_follows_geneval_position_rule():
    square = DetectedObject("square", "red", 1, 2)
    left = composition("left of")
    assert probe_relation([DetectedObject("circle", "orange", 1, 0), square], left)
    assert not probe_relation([DetectedObject("circle", "orange", 1, 2), DetectedObject("square", "red", 1, 0)], left)
    assert not probe_relation([DetectedObject("circle", "orange", 1, 0), DetectedObject("square", "blue", 1, 2)], left)
    assert not probe_relation([square], left)  # the reference alone relates to nothing


def test_similarities_are_cosine_means():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    b = torch.nn.functional.normalize(torch.tensor([[1.0, 1.0], [1.0, 0.0]]), dim=-1)
    assert mean_similarity(a, b) == pytest.approx((2 ** -0.5 + 1 + 2 ** -0.5 + 0) / 4)
    assert mean_similarity(a, a, exclude_diagonal=True) == pytest.approx(0.0)
    assert paired_similarity(a, b) == pytest.approx((2 ** -0.5 + 0) / 2)
    with pytest.raises(ValueError, match="at least two images"):
        mean_similarity(a[:1], a[:1], exclude_diagonal=True)


def test_prompt_sets_share_templates_and_seeds():
    prompts = DreamBoothPrompts("sks circle", "circle", ["a large {subject} in the centre"], [composition("above")], per_prompt=2)
    sets = prompts.sets()
    assert sets["subject"] == ["a large sks circle in the centre"] * 2
    assert sets["class"] == ["a large circle in the centre"] * 2
    assert sets["composition"] == ["a large sks circle above a large red square on a white background"] * 2
    assert prompts.without_identifier(sets["composition"])[0] == "a large circle above a large red square on a white background"
    with pytest.raises(ValueError, match="relation 'beside'"):
        Composition("{subject}", "beside", "square", "red", "white")


def test_dino_features_load_from_a_local_folder(tmp_path):
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    from pixart_lab.evaluation.clip_model import EvaluatorMissingError

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "dino")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dino")
    features = DinoImageFeatures.from_pretrained(str(tmp_path / "dino"))
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    out = features(images)
    assert out.shape == (3, 16) and not torch.allclose(out[0], out[1])
    with pytest.raises(EvaluatorMissingError, match="DINO weights not found"):
        DinoImageFeatures.from_pretrained(str(tmp_path / "missing"))


def test_probe_checks_are_not_scored_when_the_probe_failed_their_attributes():
    from pixart_lab.evaluation.attribute_probe import CellProbe
    from pixart_lab.evaluation.dreambooth import composition_scores

    images = torch.cat([render(*CELLS["left of"]), render(*reversed(CELLS["left of"]))])
    checks = [composition("left of")] * 2
    torch.manual_seed(0)
    probe = CellProbe().eval()  # untrained: whatever it reads, the scores must be fractions
    scored = composition_scores(images, checks, probe, ["shape", "colour", "position", "background"])
    assert scored["pixel_relation"] == 0.5 and 0 <= scored["probe_relation"] <= 1 and 0 <= scored["background"] <= 1
    unscored = composition_scores(images, checks, probe, ["colour"])
    assert unscored["probe_relation"] is None and unscored["background"] is None and unscored["pixel_relation"] == 0.5


def test_object_features_remove_the_background_as_drawn_so_an_empty_image_scores_zero():
    from pixart_lab.evaluation.dreambooth import COLOUR_TOLERANCE, ObjectFeatures, background_colours, image_embeddings, without_objects

    scene = render(*CELLS["above"])
    assert background_colours(scene).tolist() == [[245, 245, 245]]  # the white background, not an object's colour
    painted = without_objects(scene)
    assert not torch.equal(painted, scene)
    assert (painted.float() - 245).norm(dim=1).max() < COLOUR_TOLERANCE  # no object pixel left
    # A generated background carries noise: it is the background as drawn and stays, objects or not.
    torch.manual_seed(0)
    noise = torch.randint(-20, 21, scene.shape)
    noisy_empty = (torch.full_like(scene, 245).int() + noise).clamp(0, 255).to(torch.uint8)
    assert torch.equal(without_objects(noisy_empty), noisy_empty)

    class MeanColourAndNoise(torch.nn.Module):  # a stand-in feature: mean RGB, pixel spread, a constant
        def forward(self, images):
            x = images.float()
            return torch.cat([x.mean((2, 3)), x.std((2, 3)), torch.ones(len(images), 1)], 1)

    objects = image_embeddings(ObjectFeatures(MeanColourAndNoise()), torch.cat([scene, noisy_empty]))
    assert objects[1].abs().max() == 0 and objects[0].norm() == pytest.approx(1.0)
    assert mean_similarity(objects[1:], objects[:1]) == 0.0
    # Subtracting a plain background instead would leave the noisy empty image a residual (its spread).
    features = MeanColourAndNoise()
    plain = torch.full_like(noisy_empty, 245)
    assert (features(noisy_empty) - features(plain)).norm() > 10


def test_comparison_grid_shows_every_subject_prompt_and_the_first_of_the_other_sets():
    from pixart_lab.evaluation.dreambooth import comparison_rows

    prompts = DreamBoothPrompts("sks circle", "circle", ["a large {subject} in the centre", "a small {subject} top left"],
                                [composition("above")], per_prompt=2)  # fmt: skip
    images = {name: torch.arange(len(texts)).view(-1, 1, 1, 1).expand(-1, 3, 2, 2) for name, texts in prompts.sets().items()}
    rows = comparison_rows(torch.zeros(3, 3, 2, 2), {"base": images, "finetuned": images}, prompts)
    assert [label.split(":")[0] for label, _ in rows] == ["subject images"] + ["base", "finetuned"] * 4
    assert "small sks circle top left" in rows[3][0].replace("\n", " ")
    assert rows[3][1][:, 0, 0, 0].tolist() == [2, 3]  # the second prompt's own images
