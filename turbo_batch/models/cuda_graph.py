"""Replay a model's forward from CUDA graphs, one captured per input signature.

Why: a fused Wan DiT forward launches ~25 kernels per block (30-40 blocks); whenever the host falls behind, the
GPU waits between launches. A graph replays the same kernels with the same arguments, so its bits are the eager
forward's and the launch gaps go (1.3B 480p on an H200: 156.5 -> 155.2 ms; more on a slower or busier host).

A captured graph is keyed by the module, the shapes / dtypes / devices of the inputs and a caller-given `tag`
(anything else the forward's kernels depend on, e.g. the attention backend and top-k). Inputs are copied into
static buffers before each replay and the output is cloned out, so callers keep eager semantics. All graphs share
one memory pool: they replay one at a time on the current stream, and each one's output buffer stays alive, so
none can overwrite another's result. If a capture fails (an op that cannot be captured), it warns once and runs
every later call eagerly.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn


class GraphedForward:
    """`graphed(module, *tensors, tag=...)`: module(*tensors), through a CUDA graph captured on first use."""

    def __init__(self, warmup: int = 1):
        self.warmup = warmup
        self._graphs: dict = {}
        self._pool = None
        self.disabled = False

    def __len__(self) -> int:
        return len(self._graphs)

    @staticmethod
    def _key(module: nn.Module, tensors, tag):
        return (id(module), tag, *((tuple(t.shape), t.dtype, str(t.device)) for t in tensors))

    @torch.no_grad()
    def __call__(self, module: nn.Module, *tensors: torch.Tensor, tag=None) -> torch.Tensor:
        if self.disabled:
            return module(*tensors)
        key = self._key(module, tensors, tag)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._capture(module, tensors)
            except Exception as exc:  # noqa: BLE001 - the eager forward is always a correct fallback
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running eagerly from now "
                              "on (runtime.cuda_graph=false silences this)")
                self.disabled = True
                torch.cuda.synchronize()
                return module(*tensors)
            self._graphs[key] = entry
        graph, static_in, static_out = entry
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _capture(self, module: nn.Module, tensors):
        static_in = [t.detach().clone() for t in tensors]
        side = torch.cuda.Stream(device=static_in[0].device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile kernels and fill host-side caches outside the capture
            for _ in range(self.warmup):
                module(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = module(*static_in)
        return graph, static_in, static_out
