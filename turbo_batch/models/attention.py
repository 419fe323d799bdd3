"""One entry point for every attention kernel the DiT can use, all in (B, L, H, D) layout.

Why one function: the DiT's self-attention switches between dense SDPA, the SLA reference and the SLA Triton
kernel at run time (`WanDiT.set_attention`), and the kernels module is imported only when asked for, so the
model imports (and runs dense) on machines without Triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("dense", "sla", "sla_ref")


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    backend: str,
    *,
    proj_l: nn.Linear | None = None,
    topk: float = 0.1,
) -> torch.Tensor:
    """Attention of q over (k, v), each (B, L, H, D); returns (B, Lq, H, D) in q's dtype.

    `dense` is exact softmax attention (scale 1/sqrt(D), no mask). `sla` / `sla_ref` are sparse-linear
    attention (kernels.sla): they need the layer's learned `proj_l` and keep the top `topk` share of key blocks.
    """
    if backend == "dense":
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    if backend in ("sla", "sla_ref"):
        if proj_l is None:
            raise ValueError(f"attention backend {backend!r} needs the layer's proj_l (SLA linear-branch projection)")
        from kernels import sla

        fn = sla.sla_triton if backend == "sla" else sla.sla_reference
        return fn(q, k, v, proj_l.weight, proj_l.bias, topk)
    raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
