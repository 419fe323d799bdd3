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


def graph_median_ms(fn, calls: int = 10, reps: int = 20) -> float:
    """Median GPU milliseconds of one `fn()`: `calls` calls captured in one CUDA graph, the graph replayed `reps`
    times. For kernels of tens of microseconds: events around an eager call would also time the host's Python
    between the start event and the launch (the wrappers' checks and allocations), which can exceed the kernel."""
    fn()  # compile outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del graph
    return statistics.median(times)
