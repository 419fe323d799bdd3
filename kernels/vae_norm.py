"""The Wan VAE's RMS norm (+ SiLU) over channels, one pass over channels-last activations.

Why: the VAE decode is most of a video's render time, and its norms run over its largest tensors (96 channels at
full resolution: 4 frames of 480x832 are 300 MB in bf16). In torch the norm is four kernels (the channel norm,
the multiply by its inverse, by gamma, the SiLU): four reads and three writes of the tensor. Here a program reads
a tile of pixels once, reduces each pixel's channels in registers and writes the result once, into the caller's
buffer (the slice of the next causal conv's time-padded input).

Layout: channels-last (NDHWC) with the pixel dimensions collapsible to one stride, i.e. an [P, C] matrix of rows C
apart; anything else goes through the torch reference. Numerics are the reference's: the norm reduced in fp32,
x * (sqrt(C) / max(norm, 1e-12)) rounded once to x's dtype, times gamma (rounded to x's dtype, product rounded),
then SiLU computed in fp32 and rounded. Only the summation order of the norm (and the exp inside SiLU) differ, so
results agree within one rounding. Deterministic: a fixed launch shape per C, each row reduced in one program in a
fixed order, no atomics.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # triton is a Linux-only dependency; elsewhere the reference runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

NORM_EPS = 1e-12  # the official RMS_norm divides by F.normalize's clamped norm
USE_TRITON = True  # False: the torch reference on CUDA too (bench/bench_vae.py times both)
TILE_ELEMENTS = 4096  # values a program holds (32 a thread at 4 warps, 80 registers): rows = this // next_pow2(C)


def rms_norm_silu_ref(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, C, ...] -> x / ||x||_C * sqrt(C) * gamma (then SiLU) in x's dtype, written into `out` if given.

    The dtype semantics of the model (`vae.RMS_norm`): norm in fp32 without an fp32 copy of x, one rounding after
    the normalisation, gamma applied in x's dtype, SiLU in place."""
    C = x.shape[1]
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
    inv = C ** 0.5 / norm.clamp_min_(NORM_EPS)
    if out is None:
        out = torch.empty_like(x)
    torch.mul(x, inv, out=out)
    out.mul_(gamma.reshape(C, *([1] * (x.dim() - 2))).to(x.dtype))
    if silu:
        F.silu(out, inplace=True)
    return out


if triton is not None:

    from kernels.norms import _TL_DTYPE, _round_fp32

    @triton.jit
    def _rms_norm_silu_kernel(X, GAMMA, OUT, n_rows, C, stride_xp, stride_op, scale,
                              SILU: tl.constexpr, DTYPE: tl.constexpr, HW: tl.constexpr,
                              ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        mask = (rows < n_rows)[:, None] & cmask[None, :]
        rows64 = rows.to(tl.int64)
        x = tl.load(X + rows64[:, None] * stride_xp + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt_rn(tl.sum(x * x, axis=1))  # IEEE sqrt and divides, as torch computes them
        inv = tl.div_rn(tl.zeros_like(norm) + scale, tl.maximum(norm, 1e-12))
        y = _round_fp32(x * inv[:, None], DTYPE, HW)
        gamma = _round_fp32(tl.load(GAMMA + cols, mask=cmask, other=0.0).to(tl.float32), DTYPE, HW)
        y = _round_fp32(y * gamma[None, :], DTYPE, HW)
        if SILU:
            y = _round_fp32(tl.div_rn(y, 1.0 + tl.exp(-y)), DTYPE, HW)
        tl.store(OUT + rows64[:, None] * stride_op + cols[None, :], y.to(DTYPE), mask=mask)


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """t [B, C, ...] as an [P, C] view with unit channel stride and one row stride, or None."""
    moved = t.movedim(1, -1)
    if moved.stride(-1) != 1:
        return None
    try:
        return moved.view(-1, t.shape[1])
    except RuntimeError:
        return None


def launch_config(C: int) -> dict:
    """Fixed per C (no autotuning): a tile of TILE_ELEMENTS values, 4 warps."""
    block_c = triton.next_power_of_2(C)
    return dict(ROWS=max(1, TILE_ELEMENTS // block_c), BLOCK_C=block_c, num_warps=4, enable_fp_fusion=False)


def rms_norm_silu_triton(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """The Triton kernel on channels-last x and out (see the module docstring); the reference for other layouts."""
    if out is None:
        out = torch.empty_like(x)
    xr, orows = _as_rows(x), _as_rows(out)
    if xr is None or orows is None or out.shape != x.shape or out.dtype != x.dtype or x.dtype not in _TL_DTYPE:
        return rms_norm_silu_ref(x, gamma, silu, out)
    P, C = xr.shape
    if P == 0:
        return out
    cfg = launch_config(C)
    grid = (triton.cdiv(P, cfg["ROWS"]),)
    _rms_norm_silu_kernel[grid](xr, gamma.reshape(-1), orows, P, C, xr.stride(0), orows.stride(0), C ** 0.5,
                                SILU=silu, DTYPE=_TL_DTYPE[x.dtype], HW=not _interpreting(), **cfg)
    return out


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """The VAE's RMS norm (+ SiLU): the Triton kernel on CUDA (or under TRITON_INTERPRET=1), else the reference."""
    if USE_TRITON and triton is not None and (x.is_cuda or _interpreting()):
        return rms_norm_silu_triton(x, gamma, silu, out)
    return rms_norm_silu_ref(x, gamma, silu, out)


__all__ = ["rms_norm_silu", "rms_norm_silu_ref", "rms_norm_silu_triton", "launch_config"]
