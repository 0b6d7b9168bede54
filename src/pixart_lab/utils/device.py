"""Where work runs: the device of the frozen models (``auto`` or null: the first CUDA device when there is
one, else the CPU) and this process' place among DDP ranks."""

from __future__ import annotations

import torch


def pick_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` / None -> ``cuda`` if available else ``cpu``; anything else as given (``"cuda:1"``)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def distributed_layout() -> tuple[int, int]:
    """(rank, world_size) of DDP when it is initialised, else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
