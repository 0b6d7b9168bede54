"""Checkpoint I/O between curriculum stages: initialise from an earlier stage, export, resume.

A stage's folder ``checkpoints/<run>/`` holds Lightning's ``last.ckpt`` (weights, EMA, optimiser,
loop and data-loader position: what ``resume=last`` continues from) and ``transformer/``, the EMA
weights as a diffusers model folder, which the next stage initialises from.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import ModelMixin
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file
from torch import nn

from pixart_lab.diffusion.sampling import untied_copy
from pixart_lab.utils.io import atomic_dir, atomic_save

log = logging.getLogger(__name__)

TRANSFORMER_DIR = "transformer"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# New in stage 3 (PixArt-MS): the resolution / aspect-ratio embedders, zero-initialised at their
# output so the stage-2 model's function is unchanged at the first step.
MICRO_CONDITION_EMBEDDERS = ("resolution_embedder", "aspect_ratio_embedder")


def _is_micro_condition(key: str) -> bool:
    return any(f".{name}." in key for name in MICRO_CONDITION_EMBEDDERS)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoints written to a temporary file and renamed: a killed run never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options=None) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda tmp: torch.save(checkpoint, tmp))


def resolve_init(init: str | None, checkpoints_dir: str | Path, key: str = "init") -> Path | None:
    """``scratch``/None -> None; an earlier run's name -> its exported transformer; else a folder.

    ``key`` is the setting the error message names.
    """
    if init in (None, "", "scratch"):
        return None
    path = Path(init)
    if not path.is_dir():
        path = Path(checkpoints_dir) / init / TRANSFORMER_DIR
    if not (path / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{key}={init!r}: no transformer weights at {path / WEIGHTS_FILE} (run that stage first)")
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
