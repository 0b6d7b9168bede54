"""A callback that saves each rank's trained weights, for comparing the ranks of a DDP run."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch import Callback


class SaveRankWeights(Callback):
    """At the end of training, ``<dirpath>/rank<global rank>.pt``: the denoiser's state dict on that rank."""

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    def on_train_end(self, trainer, pl_module) -> None:
        self.dirpath.mkdir(parents=True, exist_ok=True)
        torch.save(pl_module.denoiser.state_dict(), self.dirpath / f"rank{trainer.global_rank}.pt")
