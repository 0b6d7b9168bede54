"""Checkpoint I/O between curriculum stages: initialise from an earlier stage (or official weights), export, resume.

A stage's folder ``checkpoints/<run>/`` holds Lightning's ``last.ckpt`` (weights, EMA, optimiser,
loop and data-loader position: what ``resume=last`` continues from), ``transformer/`` (``unet/`` for
the SD-class baseline), the EMA weights as a diffusers model folder, which the next stage
initialises from, and ``noise_schedule.json``, the schedule its samplers must use.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch
from diffusers import ModelMixin
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from safetensors.torch import load_file, save_file
from torch import nn

from pixart_lab.diffusion.sampling import untied_copy
from pixart_lab.models.official_checkpoint import (
    ORIGINAL_SUFFIXES,
    diffusers_to_original,
    load_original_checkpoint,
    original_buffers_for,
    original_to_diffusers,
    read_original_checkpoint,
    write_original_checkpoint,
)
from pixart_lab.utils.io import atomic_dir, atomic_save, remove_stale_temporaries

log = logging.getLogger(__name__)

TRANSFORMER_DIR = "transformer"
NETWORK_DIRS = (TRANSFORMER_DIR, "unet")  # diffusers component names of the exported networks
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
BIN_WEIGHTS_FILE = "diffusion_pytorch_model.bin"
WEIGHT_FILES = (WEIGHTS_FILE, f"{WEIGHTS_FILE}.index.json", BIN_WEIGHTS_FILE)
ORIGINAL_BUFFERS_FILE = "original_buffers.safetensors"  # pos_embed and y_embedding of an imported .pth
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


def resolve_init(init: str | None, checkpoints_dir: str | Path, key: str = "init") -> Path | None:
    """Where a stage's initial weights come from (``key``: the setting an error names).

    ``scratch``/None -> None; an official PixArt ``.pth`` -> that file; a diffusers pipeline folder ->
    its ``transformer/`` (or ``unet/``); a diffusers model folder -> itself; else an earlier run's name
    -> its exported network, ``checkpoints_dir/<run>/transformer`` (or ``unet``).
    """
    if init in (None, "", "scratch"):
        return None
    path = Path(init).expanduser()
    if path.suffix in ORIGINAL_SUFFIXES:
        if not path.is_file():
            read_original_checkpoint(path)  # raises the missing-weights error naming the file
        return path
    if not path.is_dir():
        path = Path(checkpoints_dir) / init
    if (path / "model_index.json").is_file() or not (path / "config.json").is_file():
        path = next((path / d for d in NETWORK_DIRS if (path / d / "config.json").is_file()), path / TRANSFORMER_DIR)
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise FileNotFoundError(
            f"{key}={init!r}: no transformer weights ({', '.join(WEIGHT_FILES)}) in {path}; run that stage first, "
            "or give an official .pth, a diffusers transformer folder or a pipeline folder"
        )
    return path


def weight_files(init: Path) -> list[Path]:
    """The weight files behind a :func:`resolve_init` result (an official ``.pth`` or a model folder)."""
    return [init] if init.is_file() else [init / name for name in WEIGHT_FILES if (init / name).is_file()]


def read_transformer_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A diffusers-layout state dict from an official ``.pth`` (converted; its buffers dropped) or a
    transformer folder (single or sharded safetensors, or ``.bin``)."""
    path = Path(path)
    if path.suffix in ORIGINAL_SUFFIXES:
        state, buffers = original_to_diffusers(read_original_checkpoint(path))
        log.info("%s: original layout converted; buffers %s not used (diffusers rebuilds the position table, "
                 "the null caption is T5(''))", path, sorted(buffers))  # fmt: skip
        return state
    if (path / WEIGHTS_FILE).is_file():
        return load_file(str(path / WEIGHTS_FILE))
    index = path / f"{WEIGHTS_FILE}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(path / shard)).items()}
    if (path / BIN_WEIGHTS_FILE).is_file():
        return torch.load(path / BIN_WEIGHTS_FILE, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{path}: no transformer weights ({', '.join(WEIGHT_FILES)})")


def initialise_from(transformer: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load the weights at ``path`` (see :func:`read_transformer_weights`) into ``transformer``; new
    micro-condition embedders start as no-ops.

    Shapes must agree; keys only in the target are allowed for the micro-condition embedders, any
    other missing or unexpected key is an error naming it.
    """
    state = read_transformer_weights(path)
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


def import_original_checkpoint(path: str | Path, out_dir: str | Path, ema: bool = False, attention_head_dim: int = 72) -> Path:
    """An official ``.pth`` as a diffusers transformer folder, its original buffers beside the weights
    (``original_buffers.safetensors``), so :func:`export_original_checkpoint` gives back the same file."""
    checkpoint = load_original_checkpoint(path, ema, attention_head_dim)
    with atomic_dir(out_dir) as tmp:
        checkpoint.transformer.save_pretrained(tmp)
        save_file(checkpoint.buffers, str(tmp / ORIGINAL_BUFFERS_FILE))
    return Path(out_dir)


def export_original_checkpoint(folder: str | Path, path: str | Path, null_caption: torch.Tensor | None = None) -> Path:
    """A diffusers transformer folder as an original-layout ``.pth`` (``{"state_dict": ...}``).

    The buffers come from the folder's ``original_buffers.safetensors`` when it was imported from a
    ``.pth``; otherwise the position table is rebuilt from the config and ``null_caption`` (the text
    encoder's padded encoding of ``""``, 120 tokens) becomes ``y_embedding``.
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    if (folder / ORIGINAL_BUFFERS_FILE).is_file():
        buffers = load_file(str(folder / ORIGINAL_BUFFERS_FILE))
    elif null_caption is not None:
        buffers = original_buffers_for(config, null_caption)
    else:
        raise ValueError(f"{folder} has no {ORIGINAL_BUFFERS_FILE}: give the null caption to write as y_embedding")
    return write_original_checkpoint(diffusers_to_original(read_transformer_weights(folder), buffers), path)


def export_network(network: ModelMixin, run_dir: str | Path, component: str = TRANSFORMER_DIR) -> Path:
    """Save ``network`` as ``run_dir/<component>`` (diffusers format, atomically)."""
    target = Path(run_dir) / component
    with atomic_dir(target) as tmp:
        untied_copy(network).save_pretrained(tmp)
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
