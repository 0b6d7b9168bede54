"""Where the frozen models run: ``auto`` (or null) is the first CUDA device when there is one, else the CPU."""

from __future__ import annotations

import torch


def pick_device(device: str | None = "auto") -> torch.device:
    """``"auto"`` / None -> ``cuda`` if available else ``cpu``; anything else as given (``"cuda:1"``)."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
