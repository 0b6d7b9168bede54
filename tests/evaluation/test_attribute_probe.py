import torch

from pixart_lab.data.scene import GRID
from pixart_lab.evaluation.attribute_probe import EMPTY, IGNORE, CellProbe, scene_targets
from pixart_lab.evaluation.evaluators import load_probe, save_probe


def test_cells_are_the_grid_cells_in_row_major_order_for_any_aspect_ratio():
    probe = CellProbe(cell_px=8)
    for height, width in ((48, 48), (60, 120)):
        image = torch.zeros(1, 3, height, width, dtype=torch.uint8)
        for cell in range(GRID * GRID):
            r, c = divmod(cell, GRID)
            image[0, :, r * height // 3 : (r + 1) * height // 3, c * width // 3 : (c + 1) * width // 3] = 20 * cell
        cells = probe.cells(image)
        assert cells.shape == (9, 3, 8, 8)
        # The centre pixel of every cell crop carries that cell's value.
        torch.testing.assert_close(cells[:, 0, 4, 4], torch.arange(9) * 20 / 255.0, atol=1e-3, rtol=0)


def test_scene_targets_mark_each_object_in_its_cell():
    scene = {"background": "black", "objects": [
        {"shape": "star", "colour": "cyan", "row": 2, "col": 0},
        {"shape": "circle", "colour": "red", "row": 0, "col": 1},
    ]}  # fmt: skip
    shapes, colours, background = scene_targets(scene)
    assert shapes.tolist() == [EMPTY, 1, EMPTY, EMPTY, EMPTY, EMPTY, 4, EMPTY, EMPTY]
    assert colours.tolist() == [IGNORE, 0, IGNORE, IGNORE, IGNORE, IGNORE, 5, IGNORE, IGNORE]
    assert background == 2


def test_probe_round_trips_through_its_folder(tmp_path):
    torch.manual_seed(0)
    probe = CellProbe(cell_px=16, width=8, hidden=16).eval()
    save_probe(probe, tmp_path / "probe", {"cell_px": 16, "width": 8, "hidden": 16})
    images = torch.randint(0, 256, (3, 3, 64, 96), dtype=torch.uint8)
    again = load_probe(tmp_path / "probe")
    for key, logits in probe(images).items():
        torch.testing.assert_close(again(images)[key], logits, rtol=0, atol=0)
    assert [len(s) for s in again.read(images)] == [len(s) for s in probe.read(images)]
