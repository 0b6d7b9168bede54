import dataclasses
import itertools
import json
import re

import numpy as np
import pytest

from pixart_lab.data.render import render_scene
from pixart_lab.data.scene import (
    BACKGROUND_WORDS,
    BACKGROUNDS,
    CELL_WORDS,
    COLOURS,
    COUNT_NUMERALS,
    COUNT_WORDS,
    QUALITY_PHRASES,
    RELATION_WORDS,
    SIZE_WORDS,
    NUM_CLASSES,
    SHAPES,
    Scene,
    SceneObject,
    aesthetic_score,
    class_label,
    class_name,
    corpus_caption,
    dense_caption,
    free_prompt,
    reserved_for_evaluation,
    sample_scene,
    scene_signature,
    sparse_caption,
)

CANVASES = [(64, 64), (184, 88), (88, 184), (144, 112)]  # (width, height), square and buckets


def scenes(n=300, seed=0, canvases=CANVASES):
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, *canvases[i % len(canvases)]) for i in range(n)]


def obj(shape, colour, size, row, col, width=64, height=64):
    """An object centred in its cell, built by hand (independent of the sampler)."""
    d = {"small": 0.6, "large": 0.9}[size] * min(width, height) / 3 / 2
    x, y = (col + 0.5) * width / 3, (row + 0.5) * height / 3
    bbox = (x - d, y - d, x + d, y + d)
    return SceneObject(shape, colour, size, row, col, x / width, y / height, bbox)


def scene_of(*objects, kind="relation", background="grey", quality="clean"):
    return Scene(tuple(objects), background, quality, 64, 64, kind)


# ---------------------------------------------------------------- scene graphs


def test_scene_dict_round_trips_through_json():
    for scene in scenes(100):
        assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene


def test_objects_stay_in_distinct_cells_inside_the_canvas():
    for scene in scenes(400):
        cells = [(o.row, o.col) for o in scene.objects]
        assert len(set(cells)) == len(cells)
        assert 1 <= len(scene.objects) <= 4
        cw, ch = scene.width / 3, scene.height / 3
        for o in scene.objects:
            x0, y0, x1, y1 = o.bbox
            # Inside its own cell implies inside the canvas and disjoint from every other object.
            assert o.col * cw <= x0 < x1 <= (o.col + 1) * cw, (scene, o)
            assert o.row * ch <= y0 < y1 <= (o.row + 1) * ch, (scene, o)
            assert o.cx == pytest.approx((x0 + x1) / 2 / scene.width, abs=1e-4)
            assert o.cy == pytest.approx((y0 + y1) / 2 / scene.height, abs=1e-4)


def test_scene_kinds_follow_their_definition():
    kinds = set()
    for scene in scenes(400):
        kinds.add(scene.kind)
        attrs = [(o.shape, o.colour, o.size) for o in scene.objects]
        if scene.kind == "single":
            assert len(attrs) == 1
        elif scene.kind == "count":
            assert len(attrs) >= 2 and len(set(attrs)) == 1
        else:
            assert len(attrs) >= 2 and len({a[:2] for a in attrs}) == len(attrs)
    assert kinds == {"single", "count", "relation"}


def test_colours_are_far_from_every_background():
    for (c, rgb), (b, bg) in itertools.product(COLOURS.items(), BACKGROUNDS.items()):
        assert np.abs(np.subtract(rgb, bg)).max() >= 60, (c, b)


# ---------------------------------------------------------------- captions

SIZE = "(small|large)"
COLOUR = f"({'|'.join(COLOURS)})"
SHAPE = f"({'|'.join(SHAPES)})"
REL = "(left of|right of|above|below)"


def true_relation(a, b, rel):
    """An independent reading of the relation words against the grid cells."""
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.col == b.col and a.row < b.row,
        "below": a.col == b.col and a.row > b.row,
    }[rel]


def test_dense_caption_states_the_graph_truthfully():
    quality_words = {"clean": "sharp", "noisy": "noisy", "compressed": "blurry"}
    for scene in scenes(400):
        caption = dense_caption(scene)
        m = re.fullmatch(r"a (\w+) image of (.+) on a (\w+) background", caption)
        assert m, caption
        assert m.group(1) == quality_words[scene.quality] and m.group(3) == scene.background
        body = m.group(2)
        objs = scene.objects
        if scene.kind == "single":
            m = re.fullmatch(f"a {SIZE} {COLOUR} {SHAPE} in the (.+)", body)
            o = objs[0]
            assert m and m.groups()[:3] == (o.size, o.colour, o.shape), caption
            words = m.group(4)
            assert ("top" in words) == (o.row == 0) and ("bottom" in words) == (o.row == 2), caption
            assert ("left" in words) == (o.col == 0) and ("right" in words) == (o.col == 2), caption
        elif scene.kind == "count":
            m = re.fullmatch(f"(\\w+) {SIZE} {COLOUR} {SHAPE}s", body)
            o = objs[0]
            assert m, caption
            assert m.groups() == (COUNT_WORDS[len(objs) - 1], o.size, o.colour, o.shape), caption
        else:
            by_name = {(o.colour, o.shape): o for o in objs}
            clauses = body.rstrip(",").split(", and ")
            assert len(clauses) == len(objs) - 1, caption
            m = re.fullmatch(f"a {SIZE} {COLOUR} {SHAPE} {REL} a {SIZE} {COLOUR} {SHAPE}", clauses[0])
            assert m, caption
            mentioned = [(m.group(2), m.group(3)), (m.group(6), m.group(7))]
            assert true_relation(by_name[mentioned[0]], by_name[mentioned[1]], m.group(4)), caption
            for clause in clauses[1:]:
                m = re.fullmatch(f"a {SIZE} {COLOUR} {SHAPE} {REL} the {COLOUR} {SHAPE}", clause)
                assert m, caption
                subject, reference = (m.group(2), m.group(3)), (m.group(5), m.group(6))
                assert by_name[subject].size == m.group(1)
                assert reference == mentioned[-1], caption  # chained to the previous object
                assert true_relation(by_name[subject], by_name[reference], m.group(4)), caption
                mentioned.append(subject)
            assert sorted(mentioned) == sorted(by_name), caption


def test_dense_caption_of_a_hand_built_scene():
    scene = scene_of(
        obj("circle", "red", "large", 0, 0),
        obj("triangle", "blue", "small", 0, 2),
        obj("star", "green", "small", 2, 2),
    )
    assert dense_caption(scene) == (
        "a sharp image of a large red circle left of a small blue triangle, "
        "and a small green star below the blue triangle, on a grey background"
    )
    stars = [obj("star", "blue", "small", row, 1) for row in range(3)]
    count = scene_of(*stars, kind="count", background="black", quality="noisy")
    assert dense_caption(count) == "a noisy image of three small blue stars on a black background"


def test_sparse_caption_names_part_of_one_object():
    rng = np.random.default_rng(1)
    seen = set()
    for scene in scenes(300):
        caption = sparse_caption(scene, rng)
        seen.add(caption)
        words = caption.split()
        assert 1 <= len(words) <= 2, caption
        vocabularies = [{o.colour, o.shape, o.shape + "s", o.size, "shape", "shapes"} for o in scene.objects]
        assert any(set(words) <= v for v in vocabularies), (caption, scene)
    assert {"red circle", "circle", "stars", "blue shape"} & seen


def test_class_labels_cover_the_vocabulary():
    labels = [class_label(s) for s in scenes(300)]
    assert all(0 <= label < NUM_CLASSES == 24 for label in labels)
    assert len(set(labels)) == 24
    assert class_name(0) == "red circle"
    assert class_name(NUM_CLASSES - 1) == "cyan star"
    with pytest.raises(ValueError):
        class_name(NUM_CLASSES)


def test_class_label_is_the_largest_object_first_on_ties():
    small_first = scene_of(obj("star", "red", "small", 0, 0), obj("square", "blue", "large", 1, 1))
    assert class_name(class_label(small_first)) == "blue square"
    tie = scene_of(obj("star", "red", "small", 0, 0), obj("square", "blue", "small", 1, 1))
    assert class_name(class_label(tie)) == "red star"


def test_clean_scenes_score_higher_than_degraded_ones():
    rng = np.random.default_rng(2)
    by_quality = {}
    for scene in scenes(300):
        by_quality.setdefault(scene.quality, []).append(aesthetic_score(scene, rng))
    assert set(by_quality) == {"clean", "noisy", "compressed"}
    assert min(by_quality["clean"]) > max(by_quality["noisy"]) > max(by_quality["compressed"])
    assert all(s == round(s, 3) for s in by_quality["clean"])


def test_signature_ignores_quality_and_jitter_but_not_composition():
    a = scene_of(obj("circle", "red", "large", 0, 0), obj("star", "blue", "small", 1, 2))
    first = a.objects[0]
    jittered = dataclasses.replace(first, cx=first.cx + 0.01, bbox=tuple(v + 0.64 for v in first.bbox))
    same = dataclasses.replace(a, quality="noisy", objects=(jittered, a.objects[1]))
    assert scene_signature(same) == scene_signature(a)
    assert scene_signature(dataclasses.replace(a, background="black")) != scene_signature(a)
    moved = dataclasses.replace(a.objects[1], row=2)
    assert scene_signature(dataclasses.replace(a, objects=(first, moved))) != scene_signature(a)
    stars = (obj("star", "blue", "small", 0, 0), obj("star", "blue", "small", 2, 1))
    count = scene_of(*stars, kind="count")
    swapped = dataclasses.replace(count, objects=count.objects[::-1])
    assert scene_signature(swapped) == scene_signature(count)


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize(("width", "height"), CANVASES)
def test_render_has_exact_size_and_is_deterministic(width, height):
    scene = sample_scene(np.random.default_rng(5), width, height, quality="noisy")
    image = render_scene(scene, np.random.default_rng(0))
    assert image.mode == "RGB" and image.size == (width, height)
    assert image.tobytes() == render_scene(scene, np.random.default_rng(0)).tobytes()


@pytest.mark.parametrize("shape", SHAPES)
def test_clean_render_puts_the_colour_at_the_object_centre(shape):
    pairs = [("red", "grey"), ("cyan", "white"), ("yellow", "black"), ("orange", "beige")]
    for colour, background in pairs:
        o = obj(shape, colour, "large", 1, 2, width=144, height=112)
        scene = Scene((o,), background, "clean", 144, 112, "single")
        pixels = np.asarray(render_scene(scene, np.random.default_rng(0), supersample=4)).astype(int)
        x, y = round(o.cx * 144), round(o.cy * 112)
        assert np.abs(pixels[y, x] - COLOURS[colour]).max() <= 8, (shape, colour)
        assert np.abs(pixels[2, 2] - BACKGROUNDS[background]).max() <= 8  # an empty cell


def test_degraded_renders_differ_from_clean():
    clean = scene_of(obj("square", "red", "large", 1, 1), kind="single")
    reference = np.asarray(render_scene(clean, np.random.default_rng(0))).astype(int)
    for quality in ("noisy", "compressed"):
        degraded = render_scene(dataclasses.replace(clean, quality=quality), np.random.default_rng(0))
        error = np.abs(np.asarray(degraded).astype(int) - reference).mean()
        assert 1.0 < error < 40.0, (quality, error)  # visibly worse, object still there


# ---------------------------------------------------------------- free phrasing and reserved captions


def test_varied_captions_use_only_listed_words_and_keep_the_content():
    rng = np.random.default_rng(3)
    template_words = set()
    for scene in scenes(200):
        template_words |= set(dense_caption(scene).replace(",", "").split())
    allowed = template_words | {
        w for table in (SIZE_WORDS, RELATION_WORDS, CELL_WORDS, BACKGROUND_WORDS, QUALITY_PHRASES)
        for choices in table.values() for phrase in choices for w in phrase.split()
    } | set(COUNT_NUMERALS) | {"against", "picture"}  # fmt: skip
    seen_template = 0
    for scene in scenes(300):
        caption = corpus_caption(scene, rng)
        seen_template += caption == dense_caption(scene)
        assert set(caption.replace(",", "").split()) <= allowed, caption
        for o in scene.objects:  # every object keeps its colour and shape
            assert f"{o.colour} {o.shape}" in caption, caption
    assert 0.4 < seen_template / 300 < 0.75  # half the corpus in the template's words, plus chance matches


def test_free_prompt_drops_the_quality_phrase_and_avoids_template_words():
    scene = scene_of(obj("circle", "red", "large", 1, 1), kind="single", quality="clean")
    assert dense_caption(scene) == "a sharp image of a large red circle in the centre on a grey background"
    free = free_prompt(scene)  # without a generator: the first alternative of every slot
    assert free == "a big red circle in the middle on gray"
    rng = np.random.default_rng(0)
    for scene in scenes(100):
        text = free_prompt(scene, rng)
        assert not text.startswith(("a sharp", "a noisy", "a blurry")), text
        assert " large " not in f" {text} " and " small " not in f" {text} ", text


def test_reserved_captions_are_a_sixteenth_and_depend_on_content_only():
    all_scenes = scenes(4000)
    share = np.mean([reserved_for_evaluation(s) for s in all_scenes])
    assert 0.04 < share < 0.09
    for scene in all_scenes[:200]:
        for quality in ("clean", "noisy"):
            assert reserved_for_evaluation(dataclasses.replace(scene, quality=quality)) == reserved_for_evaluation(scene)
