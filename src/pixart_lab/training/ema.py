"""Exponential moving average of a network's weights (PixArt samples and exports EMA weights)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimiser step.

    With ``warmup`` the decay ramps as ``min(decay, (1 + n) / (10 + n))`` over the first updates,
    so a run of a few hundred steps is not dominated by its random initialisation. Being a
    submodule of the LightningModule, the average is saved in (and restored from) checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        super().__init__()
        self.module = copy.deepcopy(model).requires_grad_(False).eval()
        self.decay, self.warmup = float(decay), bool(warmup)
        self.register_buffer("updates", torch.tensor(0, dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average the trainable parameters; frozen ones (a ControlNet's base) never change, so neither do their copies."""
        decay = self.current_decay()
        averaged, current = list(self.module.parameters()), list(model.parameters())
        if len(averaged) != len(current):
            raise ValueError(f"EMA holds {len(averaged)} parameters, the model {len(current)}")
        pairs = [(mine, theirs.detach()) for mine, theirs in zip(averaged, current) if theirs.requires_grad]
        if pairs:
            torch._foreach_lerp_([m for m, _ in pairs], [t for _, t in pairs], 1.0 - decay)
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            mine.copy_(theirs)
        self.updates += 1

    def train(self, mode: bool = True) -> EMA:
        return super().train(False)  # the average is only ever evaluated
