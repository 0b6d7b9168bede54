"""Whether a run may continue a checkpoint: the run fingerprint every checkpoint carries, and the rule.

Resuming is exact (same batches, noise, optimiser, scheduler, EMA and counters as an uninterrupted
run), so it is only done where the uninterrupted run would have been the same run. The fingerprint
holds the training-relevant configuration (``resume_check`` in conf/train_stage.yaml), hashes of
the inputs (feature cache, init weights) and a hash of this package's source. With ``resume=last``:

- an unfinished checkpoint (step < ``max_steps``) of another configuration or other inputs is
  refused, naming the differences: continuing would mix two runs, starting over would lose it;
- a finished one is continued only by an identical run (which then only writes its outputs, e.g.
  after a kill during the export); any other run starts over, so ``dvc repro`` after a change of
  parameters, inputs or code retrains;
- a code change alone never refuses an unfinished checkpoint (a fix between a kill and the resume is
  the user's call); it is logged.

``resume=<path>`` (someone else's checkpoint, e.g. to extend a finished run with more steps) is
refused on any configuration or input difference, finished or not.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

import pixart_lab
from pixart_lab.utils.errors import ResumeError
from pixart_lab.utils.io import file_sha256
from pixart_lab.utils.mappings import flatten

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "pixart_lab_run"


def sha256_files(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """One SHA-256 over the names (relative to ``root``) and contents of ``paths``, in the given order."""
    digest = hashlib.sha256()
    for path in map(Path, paths):
        digest.update(f"{path.relative_to(root) if root else path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def source_hash() -> str:
    """Hash of this package's Python source."""
    root = Path(pixart_lab.__file__).parent
    return sha256_files(sorted(root.rglob("*.py")), root)


@dataclass(frozen=True)
class RunFingerprint:
    """What decides a run's training trajectory: configuration, inputs (by hash) and code (by hash)."""

    config: dict[str, Any]
    inputs: dict[str, str | None] = field(default_factory=dict)
    code: str = ""

    @classmethod
    def of(cls, cfg: DictConfig, keys: Sequence[str], ignore: Sequence[str] = (), **inputs: str | None) -> RunFingerprint:
        """The values of ``keys`` in ``cfg`` (resolved, dotted paths), minus ``ignore``, plus ``inputs``."""
        config = {}
        for key in keys:
            value = OmegaConf.select(cfg, key)
            config[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        flat = {k: v for k, v in flatten(config).items() if not any(k == i or k.startswith(f"{i}.") for i in ignore)}
        return cls(flat, dict(inputs), source_hash())

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """``key: theirs -> ours`` for every configuration value or input that differs from ``other``'s."""
        out = []
        for section in ("config", "inputs"):
            ours, theirs = getattr(self, section), other.get(section, {})
            for key in sorted(set(ours) | set(theirs)):
                if ours.get(key) != theirs.get(key):
                    name = key if section == "config" else f"{key} (input hash)"
                    out.append(f"{name}: {_short(theirs.get(key))} -> {_short(ours.get(key))}")
        return out


def _short(value: Any) -> str:
    return repr(value[:12] if isinstance(value, str) and len(value) == 64 else value)  # hashes: a prefix says enough


class WriteFingerprint(L.Callback):
    """Stores the run's fingerprint in every checkpoint it saves."""

    def __init__(self, fingerprint: RunFingerprint):
        self.fingerprint = fingerprint

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = asdict(self.fingerprint)


def read_checkpoint_run(path: str | Path) -> tuple[dict | None, int]:
    """(fingerprint or None for checkpoints written without one, global step) of a Lightning checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # a checkpoint torch cannot read is reported by name, whatever the reason
        raise ResumeError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    return checkpoint.get(CHECKPOINT_KEY), int(checkpoint.get("global_step", 0))


@dataclass(frozen=True)
class ResumeDecision:
    path: str | None  # the checkpoint to continue, or None to start over
    finished: bool = False  # it has already reached max_steps: Lightning restores it and trains no step


def decide_resume(path: str | None, fingerprint: RunFingerprint, max_steps: int, explicit: bool) -> ResumeDecision:
    """Apply the module's rule to checkpoint ``path`` (``explicit``: named by the user, not ``last``)."""
    if path is None:
        return ResumeDecision(None)
    theirs, step = read_checkpoint_run(path)
    finished = max_steps is not None and 0 <= max_steps <= step
    if theirs is None:
        log.warning("%s holds no run fingerprint (written by an older version): continuing it unchecked", path)
        return ResumeDecision(path, finished)
    differences = fingerprint.differences(theirs)
    code_changed = theirs.get("code") != fingerprint.code
    if finished and not explicit and (differences or code_changed):
        reason = "; ".join(differences) or "the code changed"
        log.warning("%s is a finished run (step %d) of another configuration (%s): starting over", path, step, reason)
        return ResumeDecision(None)
    if not differences:
        if code_changed:
            log.warning("%s was written by other code (source hash %s); continuing it", path, str(theirs.get("code"))[:12])
        return ResumeDecision(path, finished)
    shown = "; ".join(differences[:4]) + (f"; and {len(differences) - 4} more" if len(differences) > 4 else "")
    raise ResumeError(
        f"{path} (step {step}{'' if finished else f' of {max_steps}'}) was written by a different run: {shown}. "
        "Continue it with its own configuration, or set resume=null (or delete it) to start over"
    )
