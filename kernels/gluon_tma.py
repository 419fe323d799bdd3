"""What the Gluon kernels (gemm_gluon, sla_gluon, sla_gluon_8bit) share for TMA: the copies under Triton 3.6's names
(the device's) or their later ones (async_load / async_store), and host descriptors with the default swizzle."""
from __future__ import annotations

import torch

try:
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import tma
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    tma_load = tma.async_load if hasattr(tma, "async_load") else tma.async_copy_global_to_shared
    tma_store = tma.async_store if hasattr(tma, "async_store") else tma.async_copy_shared_to_global
except ImportError:  # pragma: no cover - Triton without Gluon: the callers run their Triton kernels instead
    gl = None


def descriptor(t: torch.Tensor, block: list[int]):
    """A TMA descriptor of a 2-D tensor (or strided 2-D view) with the default swizzled shared layout for its block."""
    dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16, torch.float8_e4m3fn: gl.float8e4nv,
             torch.int8: gl.int8}[t.dtype]
    return TensorDescriptor.from_tensor(t, block, gl.NVMMASharedLayout.get_default_for(block, dtype))
