"""LoRA (Hu et al., 2022) on the PixArt transformer through peft, saved in diffusers' LoRA layout.

Each targeted linear ``W`` becomes ``W + (alpha / r) B A`` with ``A`` [r, in] random and ``B`` [out, r]
zero at the start, so the adapted model equals the base model until the first update; only ``A`` and
``B`` train. The targets follow PixArt's own LoRA training: self- and cross-attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``), the feed-forward linears (``ff.net.0.proj``, ``ff.net.2``),
the caption projection and the output projection.

diffusers (0.42) has no LoRA loader for PixArt: ``PixArtAlphaPipeline`` has no ``load_lora_weights`` and
``PixArtTransformer2DModel`` no ``PeftAdapterMixin`` (diffusers issues #9887, #14004). The file is
therefore written in the layout diffusers' pipeline-level ``save_lora_weights`` produces and
``PeftAdapterMixin.load_lora_adapter(..., prefix="transformer")`` reads, so it loads unchanged the day
PixArt gains that mixin::

    pytorch_lora_weights.safetensors
        transformer.<module>.lora_A.weight   [r, in_features]
        transformer.<module>.lora_B.weight   [out_features, r]
        metadata["lora_adapter_metadata"]    JSON of the peft LoraConfig, keys prefixed "transformer."
                                              (r, lora_alpha, target_modules, ...)

Until then :func:`load_lora` puts it into any diffusers PixArt transformer with peft's public functions
(``inject_adapter_in_model`` + ``set_peft_model_state_dict``); the README shows the same in a few lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from peft.functional import get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from pixart_lab.utils.io import atomic_path

PIXART_LORA_TARGETS: tuple[str, ...] = (
    "to_q", "to_k", "to_v", "to_out.0",                           # attn1 (self) and attn2 (cross) in every block
    "ff.net.0.proj", "ff.net.2",                                   # feed-forward
    "caption_projection.linear_1", "caption_projection.linear_2",  # T5 tokens -> model width
    "proj_out",                                                    # final projection to epsilon | variance
)  # fmt: skip
PREFIX = "transformer"  # the pipeline component the keys belong to (diffusers' convention)
ADAPTER = "default"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY


class LoraFormatError(ValueError):
    """A LoRA file that does not hold what this transformer can take."""


def _matches(name: str, target: str) -> bool:
    """peft's rule for a plain target name: the module's full name or a dotted suffix of it."""
    return name == target or name.endswith(f".{target}")


def lora_config(rank: int, alpha: float, target_modules: Sequence[str], dropout: float = 0.0) -> LoraConfig:
    """peft ``LoraConfig`` with ``B`` zero-initialised (the adapted model starts as the base model)."""
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    return LoraConfig(r=int(rank), lora_alpha=alpha, target_modules=list(target_modules), lora_dropout=dropout, init_lora_weights=True)


def add_lora(transformer: nn.Module, config: LoraConfig) -> nn.Module:
    """Inject LoRA layers into ``transformer`` in place; afterwards only their ``A``/``B`` require grad.

    Every target must match at least one ``nn.Linear``; one that matches nothing is an error naming it.
    """
    linears = [name for name, module in transformer.named_modules() if isinstance(module, nn.Linear)]
    unmatched = [t for t in config.target_modules if not any(_matches(n, t) for n in linears)]
    if unmatched:
        raise ValueError(
            f"LoRA target_modules {sorted(unmatched)} match no linear layer of {type(transformer).__name__}; "
            f"its linears are named like {linears[:6]}"
        )
    return inject_adapter_in_model(config, transformer, adapter_name=ADAPTER)


def lora_layers(transformer: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]


def _require_lora(transformer: nn.Module) -> None:
    if not lora_layers(transformer):
        raise ValueError(f"{type(transformer).__name__} holds no LoRA layers (add_lora or load_lora first)")


def save_lora(transformer: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``directory/pytorch_lora_weights.safetensors`` (atomically) in diffusers' layout."""
    _require_lora(transformer)
    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    tensors = {f"{PREFIX}.{k}": v.detach().contiguous().cpu() for k, v in sorted(state.items())}
    config = transformer.peft_config[ADAPTER].to_dict()
    config = {f"{PREFIX}.{k}": sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True, default=str)}
    path = Path(directory) / WEIGHT_NAME
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_lora(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], LoraConfig]:
    """The adapter's tensors (keys without the ``transformer.`` prefix) and its ``LoraConfig``."""
    path = Path(path)
    if path.is_dir():
        path = path / WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no LoRA weights at {path}")
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if raw is None:
        raise LoraFormatError(f"{path}: no '{METADATA_KEY}' metadata (rank, alpha and targets are needed to load it)")
    own = {k.removeprefix(f"{PREFIX}."): v for k, v in tensors.items() if k.startswith(f"{PREFIX}.")}
    if not own:
        raise LoraFormatError(f"{path}: no '{PREFIX}.*' tensors; found keys like {sorted(tensors)[:3]}")
    meta = {k.removeprefix(f"{PREFIX}."): v for k, v in json.loads(raw).items() if k.startswith(f"{PREFIX}.")}
    keep = set(LoraConfig.__dataclass_fields__) - {"peft_type", "task_type", "runtime_config"}
    return own, LoraConfig(**{k: v for k, v in meta.items() if k in keep})


def load_lora(transformer: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Inject the adapter saved at ``path`` (a file or its folder) into ``transformer`` and load its weights.

    Every tensor of the file must land in the model and every injected layer must receive its weights;
    anything else is a :class:`LoraFormatError` naming the keys.
    """
    state, config = read_lora(path)
    add_lora(transformer, config)
    result = set_peft_model_state_dict(transformer, state, adapter_name=ADAPTER)
    missing = [k for k in result.missing_keys if ".lora_" in k]
    if missing or result.unexpected_keys:
        raise LoraFormatError(f"{path}: missing LoRA keys {missing[:3]}, unexpected keys {result.unexpected_keys[:3]}")
    return transformer


def set_lora_enabled(transformer: nn.Module, enabled: bool) -> nn.Module:
    """Switch every LoRA layer on or off (off: the transformer computes the base model exactly)."""
    _require_lora(transformer)
    for layer in lora_layers(transformer):
        layer.enable_adapters(enabled)
    return transformer


def unload_lora(transformer: nn.Module, merge: bool = False) -> nn.Module:
    """Replace every LoRA layer by its base linear, in place; ``merge=True`` first folds ``(alpha / r) B A`` into it.

    Merged, the result is a plain diffusers transformer that saves and loads without peft.
    """
    _require_lora(transformer)
    for name, module in list(transformer.named_modules()):
        if isinstance(module, BaseTunerLayer):
            if merge:
                module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(transformer.get_submodule(parent_name) if parent_name else transformer, child, module.get_base_layer())
    if hasattr(transformer, "peft_config"):
        del transformer.peft_config
    return transformer
