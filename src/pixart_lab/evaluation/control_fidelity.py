"""Control fidelity: how well the edges of generated images follow the condition edges.

Per image, with edges detected in the generated image by the condition's own detector and a pixel
tolerance ``r`` (a hit within the (2r+1) x (2r+1) neighbourhood counts; r = 1 by default):

    precision = |G ∩ dilate_r(C)| / |G|        recall = |C ∩ dilate_r(G)| / |C|
    F1 = 2 P R / (P + R)                       IoU = |dilate_r(G) ∩ dilate_r(C)| / |dilate_r(G) ∪ dilate_r(C)|

G: generated edges, C: condition edges. Two empty maps agree perfectly (all 1); one empty map
against a non-empty one scores 0. Scores are averaged over images.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixart_lab.data.edges import EdgeDetector, binary_edges


def dilate(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean masks (N x H x W) grown by ``radius`` pixels in every direction (a square neighbourhood)."""
    if radius == 0:
        return masks
    return F.max_pool2d(masks.float().unsqueeze(1), 2 * radius + 1, stride=1, padding=radius).squeeze(1) > 0


def _ratio(hits: torch.Tensor, total: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """hits / total, and ``empty`` (1 or 0) where total is 0."""
    return torch.where(total > 0, hits / total.clamp_min(1), empty)


def edge_agreement(generated: torch.Tensor, condition: torch.Tensor, tolerance: int = 1) -> dict[str, torch.Tensor]:
    """Per-image precision, recall, F1 and IoU of boolean edge masks (N x H x W) within ``tolerance`` pixels."""
    if generated.shape != condition.shape or generated.dtype != torch.bool or condition.dtype != torch.bool:
        raise ValueError(f"edge masks must be boolean and of one shape; got {generated.dtype} {tuple(generated.shape)} "
                         f"and {condition.dtype} {tuple(condition.shape)}")  # fmt: skip
    near_g, near_c = dilate(generated, tolerance), dilate(condition, tolerance)
    n_g, n_c = generated.flatten(1).sum(1).float(), condition.flatten(1).sum(1).float()
    both_empty = ((n_g == 0) & (n_c == 0)).float()
    precision = _ratio((generated & near_c).flatten(1).sum(1).float(), n_g, both_empty)
    recall = _ratio((condition & near_g).flatten(1).sum(1).float(), n_c, both_empty)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    union = (near_g | near_c).flatten(1).sum(1).float()
    iou = _ratio((near_g & near_c).flatten(1).sum(1).float(), union, torch.ones_like(union))
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def control_fidelity(
    images: torch.Tensor, condition_edges: torch.Tensor, detector: EdgeDetector, tolerance: int = 1
) -> dict[str, float]:
    """Mean edge agreement of uint8 images (N x 3 x H x W) with uint8 condition edge maps (N x 1 x H x W)."""
    if len(images) != len(condition_edges):
        raise ValueError(f"{len(images)} images but {len(condition_edges)} condition edge maps")
    scores = edge_agreement(binary_edges(detector(images)), binary_edges(condition_edges), tolerance)
    return {name: round(float(values.mean()), 4) for name, values in scores.items()} | {"images": len(images)}
