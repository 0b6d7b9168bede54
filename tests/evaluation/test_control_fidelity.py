"""Control fidelity passes identical edges and fails shifted or random ones."""

import pytest
import torch

from pixart_lab.data.edges import CannyEdges
from pixart_lab.data.transforms import load_images
from pixart_lab.data.readers import PixArtInfoReader
from pixart_lab.evaluation.control_fidelity import control_fidelity, edge_agreement


def outline(shift=0):
    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[0, 8 + shift, 8:24] = masks[0, 23 + shift, 8:24] = True
    masks[0, 8 + shift : 24 + shift, 8] = masks[0, 8 + shift : 24 + shift, 23] = True
    return masks


def test_identical_edges_score_one_and_shifted_edges_score_low():
    same = edge_agreement(outline(), outline())
    assert {k: float(v) for k, v in same.items()} == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0}
    one_px = edge_agreement(outline(1), outline(), tolerance=1)
    assert float(one_px["f1"]) == 1.0  # within the tolerance
    assert float(edge_agreement(outline(1), outline(), tolerance=0)["f1"]) < 0.6
    far = edge_agreement(outline(5), outline())
    assert float(far["f1"]) < 0.6 and float(far["iou"]) < 0.45


def test_random_and_empty_edges_score_low():
    g = torch.Generator().manual_seed(0)
    random = torch.rand(8, 32, 32, generator=g) < 0.06  # about the condition's edge density
    scores = edge_agreement(random, outline().expand(8, -1, -1).clone())
    assert float(scores["f1"].mean()) < 0.35 and float(scores["iou"].mean()) < 0.3
    empty = torch.zeros(1, 32, 32, dtype=torch.bool)
    assert float(edge_agreement(empty, outline())["f1"]) == 0.0 and float(edge_agreement(outline(), empty)["iou"]) == 0.0
    assert float(edge_agreement(empty, empty)["f1"]) == 1.0
    with pytest.raises(ValueError, match="boolean and of one shape"):
        edge_agreement(outline().float(), outline())


def test_real_images_follow_their_own_edges_and_not_other_images(tiny_corpus):
    records = PixArtInfoReader(tiny_corpus / "heldout" / "data_info.json").records()
    images, _ = load_images(records, 64, 64, progress=False)
    canny = CannyEdges()
    edges = canny(images)
    own = control_fidelity(images, edges, canny)
    assert own["f1"] == 1.0 and own["iou"] == 1.0 and own["images"] == 12
    other = control_fidelity(images, edges.roll(1, dims=0), canny)
    assert other["f1"] < 0.4 and other["iou"] < 0.3
