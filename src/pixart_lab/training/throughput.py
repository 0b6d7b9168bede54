"""Throughput and model FLOPs utilisation (MFU) of training, as ``benchmarks/`` measure them.

MFU is the share of a device's peak that the model's own arithmetic reaches:
``MFU = FLOPs per sample x samples per second / peak FLOP/s``. FLOPs per sample are what
``torch.utils.flop_counter`` counts over forward and backward (:func:`pixart_lab.evaluation.cost.flops_of`,
the count the cost callback uses); the peak is not a datasheet figure but a large square matmul timed
on the same device in the same dtype (:func:`matmul_peak_flops`), so a CPU run has a meaningful MFU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so a wall-clock reading covers them (CUDA runs asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median(values: Sequence[float]) -> float:
    """The median (robust to the odd slow call that a shared machine adds)."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def matmul_flops(n: int) -> int:
    """FLOPs of one ``n x n`` by ``n x n`` matmul: ``n^2`` outputs of ``n`` multiply-adds (2 FLOPs each)."""
    return 2 * n**3


def matmul_peak_flops(
    n: int = 2048, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", repeats: int = 5
) -> float:
    """Achievable FLOP/s of this device: the median rate of an ``n x n`` matmul in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return matmul_flops(n) / median(time_calls(lambda: a @ b, repeats, warmup=2, device=device))


def mfu(flops_per_sample: float, samples_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over ``peak_flops``."""
    if peak_flops <= 0:
        raise ValueError(f"peak_flops must be positive, got {peak_flops}")
    return flops_per_sample * samples_per_s / peak_flops
