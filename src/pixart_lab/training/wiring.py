"""Experiment loggers (W&B offline unless the user is logged in, plus local CSV) and callbacks from config."""

from __future__ import annotations

import netrc
import os
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from pixart_lab.utils.mappings import flatten


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


def configured_entries(group_cfg: DictConfig | None) -> list[DictConfig]:
    """The entries of a name -> config mapping (``logger``, ``callbacks``) that name a ``_target_``."""
    return [c for c in (group_cfg or {}).values() if c is not None and "_target_" in c]


def build_loggers(logger_cfg: DictConfig | None) -> list[Logger]:
    """Instantiate every logger configured under ``logger``, creating its ``save_dir`` first."""
    entries = configured_entries(logger_cfg)
    for conf in entries:
        if "save_dir" in conf:
            Path(conf.save_dir).mkdir(parents=True, exist_ok=True)
    return [instantiate(conf) for conf in entries]


def build_callbacks(callbacks_cfg: DictConfig | None, *extra: Callback) -> list[Callback]:
    """Instantiate every callback configured under ``callbacks`` and append ``extra`` ones."""
    return [*(instantiate(conf) for conf in configured_entries(callbacks_cfg)), *extra]


def numeric_leaves(metrics: dict, prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1}``, numbers only (what experiment loggers take)."""
    return {k: v for k, v in flatten(metrics, "/", prefix).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def publish_metrics(
    metrics: dict, path: str | Path, loggers: list[Logger], prefix: str, step: int, config: DictConfig | None = None
) -> None:
    """Log ``metrics`` (flattened under ``prefix``) and the run's ``config`` to every logger, close
    them, and write the JSON file."""
    from pixart_lab.utils.io import write_json

    for logger in loggers:
        if config is not None:
            logger.log_hyperparams(OmegaConf.to_container(config, resolve=True))
        logger.log_metrics(numeric_leaves(metrics, prefix), step=step)
        logger.finalize("success")
    write_json(path, metrics)
