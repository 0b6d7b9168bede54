"""HED soft edges (Xie & Tu, "Holistically-Nested Edge Detection", 2015) for ControlNet conditions.

The network is the layout of ControlNet's Apache-2.0 HED re-implementation, whose weights
(``ControlNetHED.pth`` from the ``lllyasviel/Annotators`` repository) PixArt-delta's HED ControlNet
was trained on: five VGG-style stages, each with a 1x1 side projection; the edge map is the sigmoid
of the mean of the side outputs upsampled to the input size. The input is RGB in [0, 255] minus a
learned per-channel offset (``norm``). Weights are read from a local file only: nothing downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "ControlNetHED.pth"
# (input channels, output channels, convolutions) of the five stages; stages 2-5 start with a 2x max-pool.
STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))


class HedStage(nn.Module):
    """3x3 convolutions with ReLU, and a 1x1 projection of the result to one side-output channel."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int):
        super().__init__()
        self.convs = nn.Sequential(
            *(nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1) for i in range(num_convs))
        )
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HedNetwork(nn.Module):
    """Five stages; ``forward`` maps RGB in [0, 255] (N x 3 x H x W) to soft edges in [0, 1] (N x 1 x H x W)."""

    def __init__(self):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for i, (cin, cout, n) in enumerate(STAGES, start=1):
            self.add_module(f"block{i}", HedStage(cin, cout, n))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x, sides = rgb - self.norm, []
        for i in range(1, len(STAGES) + 1):
            if i > 1:
                x = F.max_pool2d(x, 2, 2)
            x, side = getattr(self, f"block{i}")(x)
            sides.append(F.interpolate(side, size=rgb.shape[-2:], mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.cat(sides, dim=1).mean(dim=1, keepdim=True))


def load_hed(weights: str | Path) -> HedNetwork:
    """The HED network with the weights at ``weights`` (a ``.pth`` file, or a folder holding ``ControlNetHED.pth``)."""
    path = Path(weights)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"HED weights not found at {path}: place {WEIGHTS_FILE} (from the lllyasviel/Annotators repository) "
            "there, or set control.weights to its path; they are never downloaded at run time"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    network = HedNetwork()
    result = network.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path} is not a ControlNet HED state dict: missing {result.missing_keys[:4]}, "
            f"unexpected {result.unexpected_keys[:4]}"
        )
    return network.eval().requires_grad_(False)
