"""The embedded DreamBooth subject: a two-tone ring in corpus style, captioned in corpus grammar."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixart_lab.data.scene import BACKGROUNDS, COLOURS
from pixart_lab.data.subject import EmbeddedSubject, Pose, StripedRing, subject_caption


def pixel(image: Image.Image, x: float, y: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(image)[int(y), int(x)])


def test_ring_has_a_hole_and_alternating_sectors_that_rotation_moves():
    ring = StripedRing(colours=("orange", "cyan"), sectors=8, inner=0.5)
    pose = Pose(row=1, col=1, size="large", rotation=0.0, background="white")
    image = ring.render(pose, size=64)
    assert image.size == (64, 64)
    x0, y0, x1, y1 = pose.placed(64, 64, "ring").bbox
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    assert pixel(image, cx, cy) == BACKGROUNDS["white"]  # the hole
    mid = 0.75 * r  # halfway across the band
    angles = [np.deg2rad(22.5 + 45 * k) for k in range(8)]  # sector centres (PIL angles run clockwise)
    band = [pixel(image, cx + mid * np.cos(a), cy + mid * np.sin(a)) for a in angles]
    assert band == [COLOURS["orange"], COLOURS["cyan"]] * 4
    rotated = ring.render(Pose(row=1, col=1, rotation=45.0), size=64)
    assert [pixel(rotated, cx + mid * np.cos(a), cy + mid * np.sin(a)) for a in angles] == [COLOURS["cyan"], COLOURS["orange"]] * 4
    assert pixel(image, 4, 4) == BACKGROUNDS["white"]  # nothing outside the cell


def test_captions_follow_the_corpus_grammar():
    pose = Pose(row=0, col=2, size="small", background="black")
    assert subject_caption(pose, "sks circle") == "a sharp image of a small sks circle in the top right on a black background"
    assert subject_caption(Pose(1, 1), "sks circle") == "a sharp image of a large sks circle in the centre on a white background"


def test_embedded_subject_writes_a_folder_of_images_and_captions(tmp_path):
    poses = [{"row": 1, "col": 1}, {"row": 0, "col": 0, "rotation": 20, "background": "grey"}, {"row": 2, "col": 2, "size": "small"}]
    records = EmbeddedSubject(tmp_path / "subject", poses, "sks", "circle").records()
    assert [r.key for r in records] == ["subject_0000.png", "subject_0001.png", "subject_0002.png"]
    assert records[1].dense_caption == "a sharp image of a large sks circle in the top left on a grey background"
    assert all((r.height, r.width) == (64, 64) for r in records)
    images = [np.asarray(Image.open(r.image_path)) for r in records]
    assert not np.array_equal(images[0], images[2])
    # A second run with fewer poses leaves exactly those: the folder is replaced, not added to.
    again = EmbeddedSubject(tmp_path / "subject", poses[:2], "sks", "circle").records()
    assert len(again) == 2 and len(list((tmp_path / "subject").iterdir())) == 4


def test_bad_poses_and_rings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"pose cell \(3, 0\) lies outside the 3x3 grid"):
        Pose(row=3, col=0)
    with pytest.raises(ValueError, match="pose background 'plaid'"):
        Pose(row=0, col=0, background="plaid")
    with pytest.raises(ValueError, match=r"ring colours \['gold'\] are not corpus colours"):
        StripedRing(colours=("gold", "cyan"))
    with pytest.raises(ValueError, match="even number of sectors"):
        StripedRing(sectors=5)


def test_references_show_the_subject_and_what_must_score_lower(tmp_path):
    subject = EmbeddedSubject(tmp_path, [{"row": 1, "col": 1}], "sks", "circle")
    poses = [{"row": 2, "col": 0, "background": "grey"}, {"row": 0, "col": 1}]
    refs = subject.references(poses)
    assert set(refs) == {"subject_in_these_poses", "ring_recoloured", "empty_backgrounds", "plain_circle_subject_colours"}
    assert all(images.shape == (2, 3, 64, 64) for images in refs.values())
    assert torch.equal(refs["subject_in_these_poses"][0], subject.render([poses[0]])[0])
    assert (refs["empty_backgrounds"][0] == torch.tensor(BACKGROUNDS["grey"], dtype=torch.uint8).view(3, 1, 1)).all()
    recoloured = refs["ring_recoloured"][0].permute(1, 2, 0).reshape(-1, 3)
    assert not any((recoloured == torch.tensor(COLOURS[c], dtype=torch.uint8)).all(1).any() for c in ("orange", "cyan"))
    circle = refs["plain_circle_subject_colours"][1].permute(1, 2, 0).reshape(-1, 3)
    assert (circle == torch.tensor(COLOURS["cyan"], dtype=torch.uint8)).all(1).sum() > 100  # pose 1: the second colour
    assert "plain_ring_subject_colours" not in EmbeddedSubject(tmp_path, [{"row": 1, "col": 1}], "sks", "ring").references(poses)
    assert "plain_circle_subject_colours" in EmbeddedSubject(tmp_path, [{"row": 1, "col": 1}], "sks", "orange circle").references(poses)
