"""OmegaConf resolvers used by ``conf/`` (registered on import by every entry point)."""

from __future__ import annotations

from omegaconf import OmegaConf

from pixart_lab.cli import multirun
from pixart_lab.training.wiring import wandb_logged_in


def ratio(a: int | str, b: int | str) -> int | float:
    """``a / b``: an int when it divides evenly, else the exact float."""
    quotient = int(a) / int(b)
    return int(quotient) if quotient.is_integer() else quotient


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pixart.wandb_offline"):
        OmegaConf.register_new_resolver("pixart.wandb_offline", lambda: not wandb_logged_in())
    if not OmegaConf.has_resolver("pixart.ratio"):
        # ${pixart.ratio:a,b} = a / b, for sizes derived from other sizes (e.g. interpolation scales);
        # exact, not floored: 128 / 12 must stay 10.67 for stage 3 to keep stage 2's position embeddings.
        OmegaConf.register_new_resolver("pixart.ratio", ratio)
    multirun.register_resolvers()  # job folders, sweep groups and job names of a multirun


register_resolvers()
