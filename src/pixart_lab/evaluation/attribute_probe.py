"""An attribute probe that reads a scene graph back from pixels, for GenEval-style checks.

The embedded corpus places at most one object in each cell of a 3x3 grid laid over the canvas
(``data/scene.py``), whatever the aspect ratio. The probe therefore resizes an image to a square of
3 x ``cell_px`` pixels, cuts it into its nine cells and classifies every cell with one small CNN:
empty or one of the shapes, the object's colour, and from all cells together the background.
Count and position follow from which cells are occupied. GenEval reads generated images with an
object detector in the same spirit; this probe is that detector for the corpus' closed world.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pixart_lab.data.scene import BACKGROUNDS, COLOURS, GRID, SHAPES

EMPTY = 0  # shape class 0 is "no object in this cell"; shape i + 1 is SHAPES[i]
IGNORE = -100  # colour target of an empty cell (no colour to read)


@dataclass(frozen=True)
class DetectedObject:
    """One object the probe found: its shape, colour and grid cell."""

    shape: str
    colour: str
    row: int
    col: int


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] images as float [0, 1] (the probe's and CLIP's input range)."""
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    return images.float().clamp(-1, 1).add(1).div(2)


def resize_images(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize float [0, 1] images to ``height x width`` without cropping (cells stay cells)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False)


def scene_targets(scene: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-cell shape classes [9], per-cell colour classes [9] (``IGNORE`` when empty), background."""
    shapes = torch.full((GRID * GRID,), EMPTY, dtype=torch.long)
    colours = torch.full((GRID * GRID,), IGNORE, dtype=torch.long)
    for obj in scene["objects"]:
        cell = obj["row"] * GRID + obj["col"]
        shapes[cell] = SHAPES.index(obj["shape"]) + 1
        colours[cell] = list(COLOURS).index(obj["colour"])
    return shapes, colours, list(BACKGROUNDS).index(scene["background"])


class CellProbe(nn.Module):
    """Classifies each grid cell (shape or empty, colour) and the image background."""

    def __init__(self, cell_px: int = 24, width: int = 32, hidden: int = 128):
        super().__init__()
        self.cell_px = cell_px
        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.SiLU()]

        self.features = nn.Sequential(
            *block(3, width, 1), *block(width, width, 2), *block(width, 2 * width, 2), *block(2 * width, 2 * width, 2),
            nn.Flatten(),  # keep the 3x3 layout: pooling it away measured much slower shape learning
            nn.Linear(2 * width * (cell_px // 8) ** 2, hidden), nn.SiLU(),
        )  # fmt: skip
        self.shape_head = nn.Linear(hidden, len(SHAPES) + 1)
        self.colour_head = nn.Linear(hidden, len(COLOURS))
        self.background_head = nn.Linear(hidden, len(BACKGROUNDS))

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] (uint8 or [-1, 1]) -> [N * 9, 3, cell_px, cell_px], cells in row-major order."""
        side = GRID * self.cell_px
        x = resize_images(to_unit_range(images), side, side)
        x = x.unfold(2, self.cell_px, self.cell_px).unfold(3, self.cell_px, self.cell_px)  # N,3,3,3,c,c
        return x.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, self.cell_px, self.cell_px)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits: ``shape`` [N, 9, 7], ``colour`` [N, 9, 8], ``background`` [N, 4]."""
        n = images.shape[0]
        h = self.features(self.cells(images) * 2 - 1).view(n, GRID * GRID, -1)
        return {
            "shape": self.shape_head(h),
            "colour": self.colour_head(h),
            "background": self.background_head(h.mean(dim=1)),
        }

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 256) -> list[list[DetectedObject]]:
        """The objects in each image: one per cell the probe finds occupied."""
        scenes = []
        for i in range(0, len(images), batch_size):
            logits = self(images[i : i + batch_size])
            shapes, colours = logits["shape"].argmax(-1), logits["colour"].argmax(-1)
            for shape_row, colour_row in zip(shapes.tolist(), colours.tolist()):
                scenes.append(
                    [
                        DetectedObject(SHAPES[s - 1], list(COLOURS)[c], *divmod(cell, GRID))
                        for cell, (s, c) in enumerate(zip(shape_row, colour_row))
                        if s != EMPTY
                    ]
                )
        return scenes


def probe_loss(logits: Mapping[str, torch.Tensor], shapes: torch.Tensor, colours: torch.Tensor, backgrounds: torch.Tensor) -> torch.Tensor:
    """Sum of the three cross-entropies (colour only where a cell holds an object)."""
    return (
        F.cross_entropy(logits["shape"].flatten(0, 1), shapes.flatten())
        + F.cross_entropy(logits["colour"].flatten(0, 1), colours.flatten(), ignore_index=IGNORE)
        + F.cross_entropy(logits["background"], backgrounds)
    )


@torch.no_grad()
def attribute_accuracy(
    probe: CellProbe, images: torch.Tensor, scenes: Sequence[Mapping[str, Any]], batch_size: int = 256
) -> dict[str, float]:
    """Held-out accuracy of every attribute the compositional checks read.

    ``occupancy`` and ``shape``/``colour`` are per cell / per object; ``count`` (number of objects),
    ``position`` (the exact set of occupied cells) and ``background`` are per image.
    """
    targets = [scene_targets(s) for s in scenes]
    shapes = torch.stack([t[0] for t in targets])
    colours = torch.stack([t[1] for t in targets])
    backgrounds = torch.tensor([t[2] for t in targets])
    pred = {"shape": [], "colour": [], "background": []}
    for i in range(0, len(images), batch_size):
        logits = probe(images[i : i + batch_size])
        for key in pred:
            pred[key].append(logits[key].argmax(-1))
    p_shape, p_colour, p_background = (torch.cat(pred[k]) for k in ("shape", "colour", "background"))
    occupied, p_occupied = shapes != EMPTY, p_shape != EMPTY
    return {
        "occupancy": (occupied == p_occupied).float().mean().item(),
        "shape": (p_shape[occupied] == shapes[occupied]).float().mean().item(),
        "colour": (p_colour[occupied] == colours[occupied]).float().mean().item(),
        "count": (occupied.sum(1) == p_occupied.sum(1)).float().mean().item(),
        "position": (occupied == p_occupied).all(1).float().mean().item(),
        "background": (p_background == backgrounds).float().mean().item(),
    }
