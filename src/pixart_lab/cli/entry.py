"""``@entry_point(config_name)``: ``hydra.main`` on ``conf/<config_name>.yaml`` for every stage, with
the errors a user can fix reported in one line.

An unknown key, an unknown group option, a wrongly typed value, a missing required value or path,
a full disk, or a :class:`~pixart_lab.utils.errors.PixArtLabError` (refused resume, NaN loss, ...)
ends the command with ``error: <what, naming the key or path>`` on stderr and exit status 2
(command line) or 1 (run time), instead of a traceback. Anything else is a bug and keeps its full
traceback; ``HYDRA_FULL_ERROR=1`` shows tracebacks for everything. In a multirun each job runs as
its own command (:mod:`pixart_lab.cli.multirun`) and returns ``optimized_metric`` where one is set.

Hydra accepts any value for a key whose default is a plain YAML value (``stage.max_steps=abc``), so
each command-line value is compared with the type of the value it replaces before the job starts.
The config directory is the checkout's ``conf/`` when the command runs from one (as DVC runs the
stages, so the parameters DVC tracks are the ones used), else the one beside the package; given as
an absolute path, so the stages also run as ``pixart-lab <stage>`` from anywhere.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, InstantiationException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from pixart_lab.cli.multirun import single_job, sweep_objective
from pixart_lab.utils.errors import ConfigError, PixArtLabError

PACKAGE_CONF_DIR = Path(__file__).resolve().parents[3] / "conf"
USAGE_EXIT, RUNTIME_EXIT = 2, 1
# File-system errors say what to fix, and their messages name the path.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
FULL_DISK = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def entry_point(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[..., Any]]:
    """Decorate a stage's ``main(cfg)``: ``hydra.main(version_base="1.3")`` on conf/, errors in one line."""

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[..., Any]:
        tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"  # the user asked for every traceback

        @functools.wraps(task)
        def checked(cfg: DictConfig) -> Any:
            # inside the job, before Hydra adds its own report; a known error's one-line exit passes
            # single_job, which stops the sweep on any other error of a job with DDP ranks started
            with single_job(), reported(enabled=not tracebacks, cfg=cfg):
                check_override_types()
                return sweep_objective(task(cfg), cfg)

        @functools.wraps(task)
        def main(*args: Any) -> Any:
            config_path = str(conf_dir(config_name))
            hydra_main = hydra.main(version_base="1.3", config_path=config_path, config_name=config_name)(checked)
            os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises composition errors instead of printing them
            try:
                with reported(enabled=not tracebacks):
                    return hydra_main(*args)
            finally:
                if not tracebacks:
                    os.environ.pop("HYDRA_FULL_ERROR", None)

        return main

    return decorate


def conf_dir(config_name: str) -> Path:
    """``conf/`` of the checkout the command runs in (where DVC runs every stage, and whose files
    dvc.yaml tracks as params), else the one beside this package."""
    local = Path.cwd() / "conf"
    return local if (local / f"{config_name}.yaml").is_file() else PACKAGE_CONF_DIR


@contextmanager
def reported(enabled: bool = True, cfg: DictConfig | None = None) -> Iterator[None]:
    """Exit with ``error: <one line>`` on an error the user can fix; let any other propagate."""
    try:
        yield
    except Exception as e:
        known = one_line(e, cfg) if enabled else None
        if known is None:
            raise
        print(f"error: {known[0]}", file=sys.stderr)
        sys.exit(known[1])


def one_line(error: BaseException, cfg: DictConfig | None = None) -> tuple[str, int] | None:
    """``(message, exit status)`` for an error the user can fix, or None for a bug."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        return one_line(error.__cause__, cfg)  # "Error in call to target ..." wraps the reader's own message
    if isinstance(error, OverrideParseException):
        return f"cannot parse {_unparsable_override()}: {_flat(error)}", USAGE_EXIT
    if isinstance(error, MissingConfigException) and error.options:
        group, _, choice = (error.missing_cfg_file or "").rpartition("/")
        return f"{group}={choice}: no such option (available: {', '.join(error.options)})", USAGE_EXIT
    if isinstance(error, HydraException):
        key = getattr(error.__cause__, "full_key", None)
        if key and str(error).startswith("Could not override"):
            return f"unknown key '{key}' (a new key needs a leading +: +{key}=...)", USAGE_EXIT
        if key:
            return f"{key}: {str(error.__cause__).splitlines()[0]}", USAGE_EXIT
        return _flat(error), USAGE_EXIT
    if isinstance(error, ConfigError):
        return str(error), USAGE_EXIT
    if isinstance(error, (MissingMandatoryValue, InterpolationToMissingValueError)):
        # The key the user must set, not the one that interpolates it (data.root, not data.splits.train.root).
        missing = re.search(r"Missing mandatory value: ([\w.\[\]-]+)", str(error))
        key = required_key(cfg, missing.group(1) if missing else error.full_key)
        return f"{key} is required: set {key}=...", USAGE_EXIT
    if isinstance(error, OmegaConfBaseException) and getattr(error, "full_key", None):
        return f"{error.full_key}: {str(error).splitlines()[0]}", USAGE_EXIT
    if isinstance(error, PixArtLabError):
        return str(error), RUNTIME_EXIT
    if isinstance(error, PATH_ERRORS) or (isinstance(error, OSError) and error.errno in FULL_DISK):
        return str(error), RUNTIME_EXIT
    return None


def required_key(cfg: DictConfig | None, key: str) -> str:
    """The key to set for missing ``key``: itself, or the missing key its interpolation reads
    (``data.root`` for ``data.splits.train.root: ${data.root}/train``, which instantiate resolved)."""
    raw = _raw_value(cfg, key) if cfg is not None else None
    references = re.findall(r"\$\{([\w.]+)\}", raw) if isinstance(raw, str) else []
    return next((ref for ref in references if _raw_value(cfg, ref) == "???"), key)


def _raw_value(cfg: DictConfig, key: str) -> Any:
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None


def _flat(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(("Config search path", "provider=")))


def _unparsable_override() -> str:
    parser = OverridesParser.create()
    for arg in sys.argv[1:]:
        if "=" in arg and not arg.startswith("-"):
            try:
                parser.parse_override(arg)
            except HydraException:
                return repr(arg)
    return "an override"


def type_problem(expected: Any, value: Any) -> str | None:
    """What is wrong with ``value`` replacing ``expected`` (a composed default), or None."""
    if expected is None or value is None or (isinstance(value, str) and "${" in value):
        return None
    if isinstance(expected, bool):
        kind, ok = "true or false", isinstance(value, bool)
    elif isinstance(expected, int):
        kind, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, float):
        kind, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(expected, (list, ListConfig)):
        kind, ok = "a list", isinstance(value, list)
    elif isinstance(expected, (dict, DictConfig)):
        kind, ok = "a mapping", isinstance(value, dict)
    else:
        return None
    return None if ok else f"expected {kind}, found {value!r}"


def check_override_types() -> None:
    """Raise ``ConfigError`` for a command-line value whose type differs from the value it replaces."""
    hydra_cfg = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    groups = set(hydra_cfg.runtime.choices)
    values = [
        o for o in overrides
        if o.key_or_group not in groups and not (o.is_add() or o.is_delete() or o.is_sweep_override() or o.is_hydra_override())
    ]  # fmt: skip
    if not values:
        return
    # The defaults the values replace: the config composed with the group choices only.
    defaults = hydra.compose(hydra_cfg.job.config_name, overrides=[o.input_line for o in overrides if o.key_or_group in groups])
    for override in values:
        expected = OmegaConf.select(defaults, override.key_or_group, throw_on_resolution_failure=False)
        problem = type_problem(expected, override.value())
        if problem:
            raise ConfigError(f"{override.input_line}: {override.key_or_group} {problem} (default {expected!r})")
