"""The embedded DreamBooth subject: a two-tone ring, a shape the corpus never contains, in a few poses.

The corpus draws six filled shapes, each in one flat colour (``data/scene.py``). The subject is an
annulus cut into sectors of two alternating colours (two by default: half orange, half cyan): a new
shape with a pattern no corpus object has.
It is drawn the corpus' way (one object in a cell of the 3x3 grid, the corpus' object sizes,
supersampled anti-aliasing, a sharp rendering on a plain background) and captioned in the corpus'
grammar with "<identifier> <class noun>" where colour and shape would stand:
``a sharp image of a large sks circle in the top left on a grey background``.

:class:`EmbeddedSubject` writes the poses as ``name.png`` + ``name.txt`` (the folder layout
``FolderReader`` reads), so a user's own subject photos drop in the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pixart_lab.data.dreambooth import write_image_folder
from pixart_lab.data.records import Record
from pixart_lab.data.render import render_scene
from pixart_lab.data.scene import BACKGROUNDS, COLOURS, GRID, SHAPES, SIZE_FRACTION, Scene, SceneObject, position_words
from pixart_lab.data.transforms import to_uint8_chw

CAPTION = "a sharp image of a {size} {subject} in the {position} on a {background} background"


@dataclass(frozen=True)
class Pose:
    """Where and how the subject appears: grid cell, corpus size word, rotation (degrees), background."""

    row: int
    col: int
    size: str = "large"
    rotation: float = 0.0
    background: str = "white"

    def __post_init__(self) -> None:
        if not (0 <= self.row < GRID and 0 <= self.col < GRID):
            raise ValueError(f"pose cell ({self.row}, {self.col}) lies outside the {GRID}x{GRID} grid")
        if self.size not in SIZE_FRACTION:
            raise ValueError(f"pose size {self.size!r}: expected one of {sorted(SIZE_FRACTION)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"pose background {self.background!r}: expected one of {sorted(BACKGROUNDS)}")

    def placed(self, width: int, height: int, shape: str) -> SceneObject:
        """The pose as a scene object centred in its cell (bbox in pixels of a ``width`` x ``height`` canvas)."""
        cell_w, cell_h = width / GRID, height / GRID
        r = SIZE_FRACTION[self.size] * min(cell_w, cell_h) / 2
        x, y = (self.col + 0.5) * cell_w, (self.row + 0.5) * cell_h
        return SceneObject(shape, "", self.size, self.row, self.col, x / width, y / height, (x - r, y - r, x + r, y + r))


@dataclass(frozen=True)
class StripedRing:
    """An annulus of ``sectors`` sectors in two alternating corpus colours; ``inner`` = hole / outer radius.

    Two sectors by default: the embedded VAE (trained on one-colour shapes) carries two halves through
    its latents, while eight come back as a ring of one mixed colour (``conf/subject/embedded.yaml``).
    """

    colours: Sequence[str] = ("orange", "cyan")
    sectors: int = 2
    inner: float = 0.4

    def __post_init__(self) -> None:
        unknown = [c for c in self.colours if c not in COLOURS]
        if unknown:
            raise ValueError(f"ring colours {unknown} are not corpus colours {sorted(COLOURS)}")
        if len(self.colours) != 2:
            raise ValueError(f"a striped ring alternates two colours, got {list(self.colours)}")
        if self.sectors < 2 or self.sectors % 2:
            raise ValueError(f"a striped ring needs an even number of sectors >= 2, got {self.sectors}")

    def draw(self, draw: ImageDraw.ImageDraw, bbox: Sequence[float], rotation: float, background: tuple[int, int, int]) -> None:
        x0, y0, x1, y1 = bbox
        step = 360.0 / self.sectors
        for k in range(self.sectors):
            start = rotation + k * step
            draw.pieslice((x0, y0, x1, y1), start, start + step, fill=COLOURS[self.colours[k % 2]])
        cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, self.inner * (x1 - x0) / 2
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=background)  # the hole shows the background

    def render(self, pose: Pose, size: int = 64, supersample: int = 4) -> Image.Image:
        """The ring in ``pose`` on a ``size`` x ``size`` canvas, anti-aliased as the corpus renders."""
        background = BACKGROUNDS[pose.background]
        image = Image.new("RGB", (size * supersample, size * supersample), background)
        bbox = pose.placed(size, size, "ring").bbox
        self.draw(ImageDraw.Draw(image), [v * supersample for v in bbox], pose.rotation, background)
        return image.reduce(supersample) if supersample > 1 else image


def _pose(pose: Pose | Mapping) -> Pose:
    return pose if isinstance(pose, Pose) else Pose(**pose)


def subject_caption(pose: Pose, subject: str, template: str = CAPTION) -> str:
    """The corpus-style caption of ``pose`` with ``subject`` ("sks circle") as the object."""
    position = position_words(pose.placed(1, 1, subject))
    return template.format(size=pose.size, subject=subject, position=position, background=pose.background)


def pose_captions(poses: Sequence[Pose | Mapping], subject: str, template: str = CAPTION) -> list[str]:
    return [subject_caption(_pose(p), subject, template) for p in poses]


class EmbeddedSubject:
    """Renders the subject's poses into ``out_dir`` as ``subject_NNNN.png`` + ``.txt``; ``records()`` reads them back."""

    def __init__(
        self,
        out_dir: str | os.PathLike,
        poses: Sequence[Pose | Mapping],
        identifier: str,
        class_noun: str,
        ring: StripedRing | None = None,
        size: int = 64,
        template: str = CAPTION,
    ):
        if not 1 <= len(poses) <= 16:
            raise ValueError(f"DreamBooth takes a handful of subject images (3-8 in the paper); got {len(poses)} poses")
        self.out_dir, self.size, self.template = Path(out_dir), int(size), template
        self.poses = [_pose(p) for p in poses]
        self.ring = ring or StripedRing()
        self.subject, self.class_noun = f"{identifier} {class_noun}", class_noun

    def render(self, poses: Sequence[Pose | Mapping], ring: StripedRing | None = None) -> torch.Tensor:
        """uint8 images [N, 3, size, size] of the ring (default: the subject's) in ``poses``."""
        ring = ring or self.ring
        return torch.stack([to_uint8_chw(ring.render(_pose(p), self.size)) for p in poses])

    def references(self, poses: Sequence[Pose | Mapping]) -> dict[str, torch.Tensor]:
        """Images that show what subject similarity means, in ``poses``: the subject itself (what a perfect
        model draws), the ring recoloured, plain corpus shapes of the class noun in the subject's colours,
        and the empty backgrounds."""
        poses = [_pose(p) for p in poses]
        others = tuple(c for c in COLOURS if c not in self.ring.colours)[:2]
        refs = {
            "subject_in_these_poses": self.render(poses),
            "ring_recoloured": self.render(poses, replace(self.ring, colours=others)),
            "empty_backgrounds": torch.stack([to_uint8_chw(Image.new("RGB", (self.size,) * 2, BACKGROUNDS[p.background])) for p in poses]),
        }
        shape = self.class_noun.split()[-1]  # "circle", or "orange circle": a colour may qualify the noun
        if shape in SHAPES:
            shapes = [replace(p.placed(self.size, self.size, shape), colour=self.ring.colours[i % 2]) for i, p in enumerate(poses)]
            scenes = [Scene((o,), p.background, "clean", self.size, self.size, "single") for o, p in zip(shapes, poses)]
            rng = np.random.default_rng(0)
            refs[f"plain_{shape}_subject_colours"] = torch.stack([to_uint8_chw(render_scene(s, rng)) for s in scenes])
        return refs

    def records(self) -> list[Record]:
        """Render every pose into ``out_dir`` (replacing what was there) and read the folder back."""
        images = self.render(self.poses)
        captions = pose_captions(self.poses, self.subject, self.template)
        return write_image_folder(images, captions, self.out_dir, "subject")
