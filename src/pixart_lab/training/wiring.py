"""Experiment loggers (W&B offline unless the user is logged in, plus local CSV) and callbacks from config."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig


def wandb_logged_in() -> bool:
    """True when W&B credentials exist (env var or ~/.netrc), so runs can sync online."""
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return False
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc(os.environ.get("NETRC", Path.home() / ".netrc")).authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def build_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Instantiate every logger configured under ``logger`` (a mapping of name -> config)."""
    if not logger_cfg:
        return []
    loggers = []
    for conf in logger_cfg.values():
        if conf is not None and "_target_" in conf:
            if "save_dir" in conf:
                Path(conf.save_dir).mkdir(parents=True, exist_ok=True)
            loggers.append(instantiate(conf))
    return loggers


def build_callbacks(callbacks_cfg: DictConfig | None, *extra: Callback) -> list[Callback]:
    """Instantiate every callback configured under ``callbacks`` and append ``extra`` ones."""
    configured = [instantiate(c) for c in (callbacks_cfg or {}).values() if c is not None and "_target_" in c]
    return [*configured, *extra]
