"""Checkpoint I/O between curriculum stages: initialise from an earlier stage, export, resume.

A stage's folder ``checkpoints/<run>/`` holds Lightning's ``last.ckpt`` (weights, EMA, optimiser,
loop and data-loader position: what ``resume=last`` continues from) and ``transformer/``, the EMA
weights as a diffusers model folder, which the next stage initialises from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from diffusers import ModelMixin
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file
from torch import nn

from pixart_lab.diffusion.sampling import untied_copy
from pixart_lab.utils.io import atomic_dir, atomic_save, remove_stale_temporaries

log = logging.getLogger(__name__)

TRANSFORMER_DIR = "transformer"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# New in stage 3 (PixArt-MS): the resolution / aspect-ratio embedders, zero-initialised at their
# output so the stage-2 model's function is unchanged at the first step.
MICRO_CONDITION_EMBEDDERS = ("resolution_embedder", "aspect_ratio_embedder")


def _is_micro_condition(key: str) -> bool:
    return any(f".{name}." in key for name in MICRO_CONDITION_EMBEDDERS)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a killed run never leaves half a
    file (and the next save removes what a killed one left), a full disk never spoils the last one."""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options=None) -> None:
        remove_stale_temporaries(path)
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` every N training steps that, at a step Lightning validates, saves after the
    validation rather than before it: the checkpoint then holds that step's validation results (in the
    metric history), and a run resumed from it misses none."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._after_validation = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        epoch_loop = trainer.fit_loop.epoch_loop
        # Lightning's own rule, evaluated at the same point it evaluates it (right after these hooks).
        if trainer.enable_validation and epoch_loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
            self._after_validation = True
            return
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_deferred(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_deferred(trainer, pl_module)  # a validation that did not run after all

    def _save_deferred(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._after_validation and not trainer.sanity_checking:
            self._after_validation = False
            super().on_train_batch_end(trainer, pl_module, None, None, 0)


def resolve_init(init: str | None, checkpoints_dir: str | Path) -> Path | None:
    """``scratch``/None -> None; an earlier run's name -> its exported transformer; else a folder."""
    if init in (None, "", "scratch"):
        return None
    path = Path(init)
    if not path.is_dir():
        path = Path(checkpoints_dir) / init / TRANSFORMER_DIR
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"init={init!r}: no transformer weights at {path / WEIGHTS_FILE} (run that stage first)")
    return path


def initialise_from(transformer: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load the weights in ``path`` into ``transformer``; new micro-condition embedders start as no-ops.

    Shapes must agree; keys only in the target are allowed for the micro-condition embedders, any
    other missing or unexpected key is an error naming it.
    """
    state = load_file(str(Path(path) / WEIGHTS_FILE))
    own = transformer.state_dict()
    wrong = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        raise ValueError(f"{path}: weights do not fit the configured model: {'; '.join(wrong[:5])}")
    result = transformer.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not _is_micro_condition(k)]
    if missing or result.unexpected_keys:
        raise ValueError(f"{path}: missing keys {missing[:5]}, unexpected keys {result.unexpected_keys[:5]}")
    new = sorted(k for k in result.missing_keys if _is_micro_condition(k))
    with torch.no_grad():
        for name, module in transformer.named_modules():
            if name.endswith(tuple(f"{e}.linear_2" for e in MICRO_CONDITION_EMBEDDERS)) and f"{name}.weight" in new:
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
    log.info("initialised from %s (%d tensors; %d new micro-condition tensors)", path, len(state), len(new))
    return {"loaded": sorted(state), "new": new}


def export_transformer(transformer: ModelMixin, run_dir: str | Path) -> Path:
    """Save ``transformer`` as ``run_dir/transformer`` (diffusers format, atomically)."""
    target = Path(run_dir) / TRANSFORMER_DIR
    with atomic_dir(target) as tmp:
        untied_copy(transformer).save_pretrained(tmp)
    return target


def resume_path(resume: str | None, run_dir: str | Path) -> str | None:
    """``last`` -> ``run_dir/last.ckpt`` if it exists (else start fresh); a path -> that file; None -> None."""
    if not resume:
        return None
    if resume == "last":
        last = Path(run_dir) / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    return str(resume)
