"""Scene graphs of the embedded corpus and the words that describe them.

A scene is 1-4 coloured shapes in distinct cells of a 3x3 grid on a plain background. Its graph
(shapes, colours, sizes, cells, pairwise relations, background, rendering quality) is the ground
truth behind three kinds of supervision the paper contrasts:

* a *dense* caption that states the whole graph (PixArt's LLaVA re-captioning, Sec. 2.4), in the
  template's words or, for half the corpus, in freely varied ones (synonyms, short forms, numerals),
  as a captioning model would phrase it and a user would type it,
* a *sparse*, alt-text-like caption naming one object partly (the LAION-style baseline),
* a class label (stage 1, pixel dependency) and an aesthetic score (stage 3 subset).

Objects never leave their cell, so they never overlap and never leave the canvas, for any canvas
shape; relations are read off the cells, so every relation a caption states is true.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

# Four shapes that stay distinct through the VAE at 12x12 latents (hexagon and diamond, measured in an
# earlier corpus, came back from the round trip as circles and squares).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
PLURALS: dict[str, str] = {shape: shape + "s" for shape in SHAPES}

# Saturated colours; each is far (in RGB) from every background so the object is always visible
# and a colour probe can read it from the pixel at the object's centre.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 215, 20),
    "orange": (245, 125, 15),
    "cyan": (20, 200, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "beige": (215, 200, 165),
}
SIZES: tuple[str, ...] = ("small", "large")
# Object diameter as a fraction of the smaller side of its grid cell.
SIZE_FRACTION: dict[str, float] = {"small": 0.6, "large": 0.9}
QUALITIES: tuple[str, ...] = ("clean", "noisy", "compressed")
QUALITY_PROBS: tuple[float, ...] = (0.5, 0.25, 0.25)
# Aesthetic score ranges (LAION-aesthetics-like 1-10 scale): degraded renderings score lower.
AESTHETIC_RANGES: dict[str, tuple[float, float]] = {
    "clean": (6.0, 7.5),
    "noisy": (3.5, 5.0),
    "compressed": (1.5, 3.0),
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
COUNT_WORDS: tuple[str, ...] = ("one", "two", "three", "four")
KINDS: tuple[str, ...] = ("single", "count", "relation")
GRID = 3
ROW_WORDS: tuple[str, ...] = ("top", "centre", "bottom")
COL_WORDS: tuple[str, ...] = ("left", "centre", "right")
MAX_OBJECTS = 4
NUM_CLASSES = len(SHAPES) * len(COLOURS)
# Fraction of the free space in a cell that the centre may move by (kept well inside the cell).
JITTER = 0.5


@dataclass(frozen=True)
class SceneObject:
    """One shape: its attributes, its grid cell, and where it was placed.

    ``cx``/``cy`` are the centre normalised to [0, 1] by the canvas width/height; ``bbox`` is
    ``(x0, y0, x1, y1)`` in pixels of the canvas the scene was sampled for.
    """

    shape: str
    colour: str
    size: str
    row: int
    col: int
    cx: float
    cy: float
    bbox: tuple[float, float, float, float]

    @property
    def name(self) -> str:
        """``"red circle"``: how a caption refers back to this object."""
        return f"{self.colour} {self.shape}"

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    def to_dict(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "colour": self.colour,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "cx": self.cx,
            "cy": self.cy,
            "bbox": list(self.bbox),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SceneObject:
        return cls(
            shape=d["shape"],
            colour=d["colour"],
            size=d["size"],
            row=int(d["row"]),
            col=int(d["col"]),
            cx=float(d["cx"]),
            cy=float(d["cy"]),
            bbox=tuple(float(v) for v in d["bbox"]),
        )


@dataclass(frozen=True)
class Relation:
    """``objects[subject]`` is ``relation`` ``objects[reference]`` (e.g. 0 "left of" 1)."""

    subject: int
    relation: str
    reference: int

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "relation": self.relation, "reference": self.reference}


@dataclass(frozen=True)
class Scene:
    """A scene graph: objects in caption order, background, rendering quality and canvas size."""

    objects: tuple[SceneObject, ...]
    background: str
    quality: str
    width: int
    height: int
    kind: str

    @property
    def relations(self) -> tuple[Relation, ...]:
        """The relations the dense caption states, in caption order (derived from the cells).

        Object 0 is related to object 1 ("a red circle left of a blue triangle"); every later
        object ``i`` is related to object ``i - 1`` ("and a green star below the blue triangle").
        """
        if self.kind != "relation":
            return ()
        pairs = [(0, 1)] + [(i, i - 1) for i in range(2, len(self.objects))]
        return tuple(
            Relation(s, relation_between(self.objects[s], self.objects[r]), r) for s, r in pairs
        )

    def to_dict(self) -> dict[str, Any]:
        """Everything an evaluator needs; ``relations`` and ``count`` are derived, for convenience."""
        return {
            "kind": self.kind,
            "background": self.background,
            "quality": self.quality,
            "width": self.width,
            "height": self.height,
            "count": len(self.objects),
            "objects": [o.to_dict() for o in self.objects],
            "relations": [r.to_dict() for r in self.relations],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Scene:
        return cls(
            objects=tuple(SceneObject.from_dict(o) for o in d["objects"]),
            background=d["background"],
            quality=d["quality"],
            width=int(d["width"]),
            height=int(d["height"]),
            kind=d["kind"],
        )


def relation_between(subject: SceneObject, reference: SceneObject) -> str:
    """The relation word that is true for the two cells: horizontal if the columns differ."""
    if subject.col != reference.col:
        return "left of" if subject.col < reference.col else "right of"
    if subject.row != reference.row:
        return "above" if subject.row < reference.row else "below"
    raise ValueError(f"objects share cell {subject.cell}; a scene places one object per cell")


def _place(
    rng: np.random.Generator, row: int, col: int, size: str, width: int, height: int
) -> tuple[float, float, tuple[float, float, float, float]]:
    """Centre and bbox of an object of ``size`` jittered inside cell (row, col)."""
    cell_w, cell_h = width / GRID, height / GRID
    diameter = SIZE_FRACTION[size] * min(cell_w, cell_h)
    slack_x, slack_y = (cell_w - diameter) / 2, (cell_h - diameter) / 2
    x = (col + 0.5) * cell_w + JITTER * slack_x * rng.uniform(-1.0, 1.0)
    y = (row + 0.5) * cell_h + JITTER * slack_y * rng.uniform(-1.0, 1.0)
    # Round once here so the stored scene (JSON) renders exactly like the sampled one.
    r = diameter / 2
    bbox = (round(x - r, 3), round(y - r, 3), round(x + r, 3), round(y + r, 3))
    return round(x / width, 5), round(y / height, 5), bbox


def sample_scene(
    rng: np.random.Generator,
    width: int,
    height: int,
    *,
    kind: str | None = None,
    quality: str | None = None,
) -> Scene:
    """Draw a random scene for a ``width`` x ``height`` canvas (kind/quality may be fixed)."""
    kind = kind if kind is not None else KINDS[int(rng.integers(len(KINDS)))]
    if kind not in KINDS:
        raise ValueError(f"unknown scene kind {kind!r}; expected one of {KINDS}")
    n = 1 if kind == "single" else int(rng.integers(2, MAX_OBJECTS + 1))
    cells = rng.choice(GRID * GRID, size=n, replace=False)

    def attributes() -> tuple[str, str, str]:
        return (
            SHAPES[int(rng.integers(len(SHAPES)))],
            list(COLOURS)[int(rng.integers(len(COLOURS)))],
            SIZES[int(rng.integers(len(SIZES)))],
        )

    if kind == "count":
        attrs = [attributes()] * n
    else:
        attrs, seen = [], set()
        while len(attrs) < n:
            shape, colour, size = attributes()
            if (shape, colour) not in seen:
                seen.add((shape, colour))
                attrs.append((shape, colour, size))

    objects = []
    for cell, (shape, colour, size) in zip(cells, attrs):
        row, col = divmod(int(cell), GRID)
        cx, cy, bbox = _place(rng, row, col, size, width, height)
        objects.append(SceneObject(shape, colour, size, row, col, cx, cy, bbox))
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    if quality is None:
        quality = QUALITIES[int(rng.choice(len(QUALITIES), p=QUALITY_PROBS))]
    elif quality not in QUALITIES:
        raise ValueError(f"unknown quality {quality!r}; expected one of {QUALITIES}")
    return Scene(tuple(objects), background, quality, int(width), int(height), kind)


# Words a dense caption may use for each slot. The first choice is the template's (the canonical
# caption, also the evaluation prompts'); the others are the free phrasings users type.
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "grey": ("grey", "gray"), "white": ("white",), "black": ("black",), "beige": ("beige",)
}  # fmt: skip
CELL_WORDS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("in the top left", "at the top left", "in the upper left corner"),
    (0, 1): ("in the top centre", "at the top", "at the top in the middle"),
    (0, 2): ("in the top right", "at the top right", "in the upper right corner"),
    (1, 0): ("in the centre left", "on the left", "at the left"),
    (1, 1): ("in the centre", "in the middle", "in the center"),
    (1, 2): ("in the centre right", "on the right", "at the right"),
    (2, 0): ("in the bottom left", "at the bottom left", "in the lower left corner"),
    (2, 1): ("in the bottom centre", "at the bottom", "at the bottom in the middle"),
    (2, 2): ("in the bottom right", "at the bottom right", "in the lower right corner"),
}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
COUNT_NUMERALS: tuple[str, ...] = ("1", "2", "3", "4")
QUALITY_PHRASES: dict[str, tuple[str, ...]] = {
    "clean": ("a sharp image of", "", "a picture of", "an image of"),
    "noisy": ("a noisy image of", "a grainy picture of"),
    "compressed": ("a blurry image of", "a blurry picture of"),
}
BACKGROUND_PHRASES: tuple[str, ...] = ("on a {} background", "on {}", "against a {} background", "")
# Share of corpus captions in the template's words; the rest vary every slot at random.
TEMPLATE_SHARE = 0.5


@dataclass(frozen=True)
class Phrasing:
    """How a dense caption words each slot, given the slot's choices (``choices[0]`` is the template's).

    Without ``rng``: the template's words (``free``: each slot's first alternative). With ``rng``: a
    random choice per slot (``free``: a random alternative wherever the slot has one).
    """

    rng: np.random.Generator | None = None
    free: bool = False

    def pick(self, choices: tuple[str, ...], avoid_template: bool = True) -> str:
        """The words for one slot; ``avoid_template=False`` lets a random free phrasing draw the template's too."""
        if self.free and not avoid_template and self.rng is not None:
            return choices[int(self.rng.integers(len(choices)))]
        if self.free and len(choices) > 1:
            return choices[1 + int(self.rng.integers(len(choices) - 1))] if self.rng else choices[1]
        if self.rng is None or self.free:
            return choices[0]
        return choices[int(self.rng.integers(len(choices)))]


TEMPLATE = Phrasing()


def _describe(obj: SceneObject, words: Phrasing) -> str:
    return f"a {words.pick(SIZE_WORDS[obj.size])} {obj.colour} {obj.shape}"


def position_words(obj: SceneObject) -> str:
    """``"top left"``, ``"centre"``, ``"bottom centre"``: the cell of a lone object in words."""
    row, col = ROW_WORDS[obj.row], COL_WORDS[obj.col]
    return "centre" if row == col == "centre" else f"{row} {col}"


def dense_caption(scene: Scene, words: Phrasing = TEMPLATE, quality: bool = True) -> str:
    """State the whole scene graph in words (PixArt's information-dense caption).

    ``a sharp image of a large red circle left of a small blue triangle, and a small green star
    below the blue triangle, on a grey background`` in the template's words; with a random
    ``words``, e.g. ``a big red circle to the left of a tiny blue triangle, and ... on gray``.
    ``quality=False`` leaves out the rendering-quality phrase (a user's prompt).
    """
    objs = scene.objects
    if scene.kind == "single":
        body = f"{_describe(objs[0], words)} {words.pick(CELL_WORDS[objs[0].cell])}"
    elif scene.kind == "count":
        o = objs[0]
        count = words.pick((COUNT_WORDS[len(objs) - 1], COUNT_NUMERALS[len(objs) - 1]), avoid_template=False)
        body = f"{count} {words.pick(SIZE_WORDS[o.size])} {o.colour} {PLURALS[o.shape]}"
    else:
        rels = scene.relations
        relation = lambda rel: words.pick(RELATION_WORDS[rel.relation])  # noqa: E731
        body = f"{_describe(objs[0], words)} {relation(rels[0])} {_describe(objs[1], words)}"
        for rel in rels[1:]:
            body += f", and {_describe(objs[rel.subject], words)} {relation(rel)} the {objs[rel.reference].name}"
        if len(rels) > 1:
            body += ","
    prefix = words.pick(QUALITY_PHRASES[scene.quality]) if quality else ""
    background = words.pick(BACKGROUND_PHRASES).format(words.pick(BACKGROUND_WORDS[scene.background]))
    return " ".join(f"{prefix} {body} {background}".split()).rstrip(",")


def corpus_caption(scene: Scene, rng: np.random.Generator) -> str:
    """A training caption: the template's words for ``TEMPLATE_SHARE`` of scenes, else random words."""
    return dense_caption(scene, TEMPLATE if rng.uniform() < TEMPLATE_SHARE else Phrasing(rng))


def free_prompt(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """The scene as a user would type it: no quality phrase, a non-template word wherever there is one."""
    return dense_caption(scene, Phrasing(rng, free=True), quality=False)


# One caption content in RESERVED_SHARE is never trained on: the evaluation prompts are drawn from these,
# so they are held out as text (in any phrasing), not only as scene graphs.
RESERVED_SHARE = 16


def reserved_for_evaluation(scene: Scene) -> bool:
    """Whether the scene's caption content (template words, quality left out) is held out of training."""
    return zlib.crc32(dense_caption(scene, quality=False).encode()) % RESERVED_SHARE == 0


def sparse_caption(scene: Scene, rng: np.random.Generator) -> str:
    """An alt-text-like caption: one object, partly described (``"red circle"``, ``"stars"``)."""
    obj = scene.objects[int(rng.integers(len(scene.objects)))]
    if scene.kind == "count":
        templates = ("{plural}", "{colour} {plural}", "{colour} shapes")
    else:
        templates = ("{colour} {shape}", "{shape}", "{colour} shape", "{size} {shape}")
    template = templates[int(rng.integers(len(templates)))]
    return template.format(
        plural=PLURALS[obj.shape], shape=obj.shape, colour=obj.colour, size=obj.size
    )


def class_label(scene: Scene) -> int:
    """Class of the largest object (first one on ties): ``shape_index * len(COLOURS) + colour_index``."""
    obj = next((o for o in scene.objects if o.size == "large"), scene.objects[0])
    return SHAPES.index(obj.shape) * len(COLOURS) + list(COLOURS).index(obj.colour)


def class_name(label: int) -> str:
    """``class_name(0) == "red circle"``."""
    if not 0 <= label < NUM_CLASSES:
        raise ValueError(f"class label {label} out of range [0, {NUM_CLASSES})")
    shape, colour = divmod(label, len(COLOURS))
    return f"{list(COLOURS)[colour]} {SHAPES[shape]}"


def aesthetic_score(scene: Scene, rng: np.random.Generator) -> float:
    """A score on the 1-10 scale, higher for clean renderings (used to pick the stage-3 subset)."""
    low, high = AESTHETIC_RANGES[scene.quality]
    return round(float(rng.uniform(low, high)), 3)


def scene_signature(scene: Scene) -> str:
    """Canonical string of the composition: equal iff two scenes show the same graph.

    Ignores quality, jitter and canvas size. Count scenes are canonicalised by sorting the cells
    (their objects are interchangeable); relation scenes keep caption order, which the relations
    refer to.
    """
    if scene.kind == "count":
        o = scene.objects[0]
        cells = ",".join(f"r{r}c{c}" for r, c in sorted(x.cell for x in scene.objects))
        objects = f"{len(scene.objects)}x {o.size} {o.colour} {o.shape}@{cells}"
    else:
        objects = ";".join(f"{o.size} {o.colour} {o.shape}@r{o.row}c{o.col}" for o in scene.objects)
    relations = ";".join(f"{r.subject} {r.relation} {r.reference}" for r in scene.relations)
    return f"{scene.kind}|{scene.background}|{objects}|{relations}"
