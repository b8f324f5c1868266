"""Shared timing for the benchmark scripts: warm up once, synchronise the device, take the median."""

from __future__ import annotations

import time

import torch

__all__ = ["sync", "timed"]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int = 3) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
