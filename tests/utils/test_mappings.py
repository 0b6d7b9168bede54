"""One flatten for config fingerprints (dotted keys) and logged metrics (slashed keys, numbers only)."""

from __future__ import annotations

from pixart_lab.training.wiring import numeric_leaves
from pixart_lab.utils.mappings import flatten

TREE = {"stage": {"lr": 2e-3, "grid": {"size": [128, 128], "extra": {}}}, "name": "stage2", "ok": True}


def test_flatten_joins_levels_and_keeps_lists_and_empty_mappings_as_values():
    assert flatten(TREE) == {"stage.lr": 2e-3, "stage.grid.size": [128, 128], "stage.grid.extra": {}, "name": "stage2", "ok": True}
    assert flatten(TREE, "/", "run/")["run/stage/grid/size"] == [128, 128]


def test_logged_metrics_are_the_numeric_leaves_under_the_prefix():
    assert numeric_leaves({"quality": {"fid": 35.4, "step": 1400, "source": "ema"}, "skipped": False}, "eval/") == {
        "eval/quality/fid": 35.4,
        "eval/quality/step": 1400,
    }
