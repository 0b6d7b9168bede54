"""OmegaConf resolvers used by ``conf/`` (registered on import by every entry point)."""

from __future__ import annotations

from omegaconf import OmegaConf

from pixart_lab.cli import multirun
from pixart_lab.training.wiring import wandb_logged_in


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("pixart.wandb_offline"):
        OmegaConf.register_new_resolver("pixart.wandb_offline", lambda: not wandb_logged_in())
    if not OmegaConf.has_resolver("pixart.ratio"):
        # ${pixart.ratio:a,b} = a // b, for sizes derived from other sizes (e.g. interpolation scales)
        OmegaConf.register_new_resolver("pixart.ratio", lambda a, b: int(a) // int(b))
    multirun.register_resolvers()  # job folders, sweep groups and job names of a multirun


register_resolvers()
