"""The evaluator bundle the ``train_evaluators`` stage writes and ``evaluate`` reads.

``<dir>/clip``: CLIPModel + processor (transformers format); ``<dir>/probe``: the attribute probe
(``config.json`` + ``model.safetensors``); ``<dir>/validation.json``: held-out figures, including
which probe attributes passed the accuracy bar; ``<dir>/compositional_prompts.json``: the held-out
prompt set.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from pixart_lab.evaluation.attribute_probe import CellProbe
from pixart_lab.evaluation.clip_model import EvaluatorMissingError
from pixart_lab.evaluation.compositional import CompositionalPrompt
from pixart_lab.utils.io import atomic_dir, write_json


def save_probe(probe: CellProbe, folder: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write the probe's constructor arguments and weights (atomically, as one folder)."""
    with atomic_dir(folder) as tmp:
        write_json(tmp / "config.json", config)
        save_file(probe.state_dict(), str(tmp / "model.safetensors"))


def load_probe(folder: str | os.PathLike) -> CellProbe:
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise EvaluatorMissingError(f"attribute probe not found at {folder}; run the train_evaluators stage first")
    probe = CellProbe(**json.loads((folder / "config.json").read_text()))
    probe.load_state_dict(load_file(str(folder / "model.safetensors")))
    return probe.eval()


@dataclass
class CompositionalEvaluator:
    """The probe, the attributes it may score, and the held-out prompts."""

    probe: CellProbe
    valid_attributes: list[str]
    prompts: list[CompositionalPrompt]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> CompositionalEvaluator:
        folder = Path(folder)
        validation = json.loads((folder / "validation.json").read_text())
        prompts = [CompositionalPrompt(**p) for p in json.loads((folder / "compositional_prompts.json").read_text())]
        return cls(load_probe(folder / "probe"), validation["probe"]["valid_attributes"], prompts)
