"""CUDA-event timing shared by the whole-model benchmarks (kernel benchmarks use triton.testing.do_bench)."""
from __future__ import annotations

import statistics

import torch


def cuda_median_ms(fn, warmup: int, iters: int, reset_peak: bool = True) -> tuple[float, int, int]:
    """Median milliseconds of `fn()` over `iters` timed calls after `warmup` untimed ones, with the peak bytes
    allocated and the bytes already allocated before the timed calls (so callers can report either).

    `reset_peak=False` leaves the peak counter alone, for callers that track the peak of more than the timed calls.
    """
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    if reset_peak:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), torch.cuda.max_memory_allocated(), base
