"""The ceiling of every generated-image metric: held-out real images after a VAE round trip.

A latent diffusion model draws through its VAE's decoder, so the best it can score is what the
metric gives real images encoded and decoded. The ceiling suite runs the very ``QualitySuite`` the
generators are judged by, with a "generator" that returns those round trips: half A's images for
FID and CLIP score, and the sharp renders of the held-out compositional prompts for the probe.
If the ceiling is low, the corpus or the VAE is wrong, not the curriculum (DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL

from pixart_lab.models.vae import round_trip_uint8


class RoundTripGenerator:
    """Answers a list of conditions with the VAE round trips of the real images registered for it."""

    def __init__(self, vae: AutoencoderKL, batch_size: int = 64):
        self.vae, self.batch_size = vae, batch_size
        self._images: dict[tuple, torch.Tensor] = {}

    def register(self, conditions: Sequence, images: torch.Tensor) -> None:
        """``images`` (uint8 [N, 3, H, W]) are the real images of ``conditions`` (N of them)."""
        if len(conditions) != len(images):
            raise ValueError(f"{len(conditions)} conditions but {len(images)} images")
        self._images[tuple(conditions)] = images

    def __call__(self, conditions: Sequence) -> torch.Tensor:
        key = tuple(conditions)
        if key not in self._images:
            raise KeyError(f"no real images registered for these {len(key)} conditions (first: {key[:1]})")
        return round_trip_uint8(self.vae, self._images[key], self.batch_size)
