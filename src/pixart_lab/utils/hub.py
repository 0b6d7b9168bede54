"""Pretrained weights by local path or Hugging Face name, with one error for every missing component.

Every real component (T5-XXL, sd-vae-ft-ema, CLIP ViT-L/14, clean-fid's Inception, an official
PixArt checkpoint, a captioning VLM) takes a local path or a hub name. Offline
(``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``) a hub name is read from the local cache only.
Whatever is missing, the user reads one kind of message naming the component, what was tried and
what to do:

    VAE 'stabilityai/sd-vae-ft-ema' is not available: not in the local Hugging Face cache, and
    HF_HUB_OFFLINE=1 forbids downloading it. Download it once where there is network access
    (`hf download stabilityai/sd-vae-ft-ema`) and set vae.pretrained to the downloaded folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


class MissingWeightsError(FileNotFoundError):
    """A pretrained component's weights are not on disk (and cannot be downloaded now)."""


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set (read at call time)."""
    return any(os.environ.get(v, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for v in OFFLINE_VARIABLES)


def is_local(name_or_path: str | os.PathLike) -> bool:
    """A path rather than a hub name: it exists, or it is spelled as a path (absolute, ``./``, ``~``,
    or more than one ``/``, which no ``owner/name`` repository id has)."""
    name = os.fspath(name_or_path)
    return Path(name).expanduser().exists() or os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1


def download_hint(tried: str | os.PathLike, setting: str, hub_name: str) -> str:
    """What to do about a missing component: fetch ``hub_name`` (or ``tried``, if it is a hub name)
    where there is network access, then point the config ``setting`` at the downloaded folder."""
    tried = os.fspath(tried)
    if is_local(tried):
        return (
            f"Check {setting}, or download the weights once where there is network access "
            f"(`hf download {hub_name}`) and set {setting} to the downloaded folder."
        )
    return f"Download it once where there is network access (`hf download {tried}`) and set {setting} to the downloaded folder."


def missing_weights_error(
    component: str,
    tried: str | os.PathLike,
    fix: str,
    reason: str | None = None,
    cause: BaseException | None = None,
    error: type[MissingWeightsError] = MissingWeightsError,
) -> MissingWeightsError:
    """``<component> '<tried>' is not available: <reason>. <fix>``; ``reason`` defaults to what the path
    and the offline setting imply (no such file, not in the cache, download failed)."""
    tried = os.fspath(tried)
    if reason is None:
        if is_local(tried) and not Path(tried).expanduser().exists():
            reason = "no such file or folder"
        elif not is_local(tried) and hub_offline():
            reason = "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading it"
        else:  # a folder that is there but unreadable, or a failed download: the library's words help
            reason = "it could not be read" if is_local(tried) else "it could not be downloaded"
            if cause is not None:
                reason += f" ({type(cause).__name__}: {first_line(cause)})"
    return error(f"{component} '{tried}' is not available: {reason}. {fix}")


def dtype_kwargs(dtype: object | None) -> dict:
    """``from_pretrained``'s dtype argument (``"bfloat16"`` or a ``torch.dtype``); none for ``None``.

    transformers 5 renamed ``torch_dtype`` to ``dtype``; 4.x only knows the former.
    """
    if dtype is None:
        return {}
    import torch
    import transformers

    if isinstance(dtype, str) and dtype != "auto":
        dtype = getattr(torch, dtype)
    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    return {key: dtype}


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0].rstrip(".")


def load_pretrained(
    component: str,
    name_or_path: str | os.PathLike,
    fix: str,
    load: Callable[[bool], T],
    error: type[MissingWeightsError] = MissingWeightsError,
) -> T:
    """``load(local_files_only)`` for a local path or a hub name; a failure becomes a ``MissingWeightsError``.

    ``local_files_only`` is True for a path and whenever the hub is offline, so nothing is fetched then.
    A hub library's ``OSError`` / ``ValueError`` (missing file, no network, unknown repository) is
    re-raised as the one message of :func:`missing_weights_error`, the original kept as ``__cause__``.
    """
    local = is_local(name_or_path)
    if local and not Path(os.fspath(name_or_path)).expanduser().exists():
        raise missing_weights_error(component, name_or_path, fix, error=error)
    try:
        return load(local or hub_offline())
    except MissingWeightsError:
        raise
    except (OSError, ValueError) as err:
        raise missing_weights_error(component, name_or_path, fix, cause=err, error=error) from err
