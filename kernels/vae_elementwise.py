"""The Wan VAE's elementwise passes, each one read and one write over channels-last activations.

Why: the VAE decode is most of a video's render time, and its elementwise work runs over its largest tensors (96
channels at full resolution: 4 frames of 480x832 are 300 MB in bf16). In torch, a residual block's norm is four
kernels (the channel norm, the multiply by its inverse, by gamma, the SiLU), and every conv's bias is a broadcast add
of its own after cuDNN's conv (PyTorch adds a cuDNN conv's bias separately). Here:

- `rms_norm_silu(x, gamma, silu, out, bias)`: (x + bias) / ||x + bias||_C * sqrt(C) * gamma, then SiLU, written into
  the caller's buffer (the slice of the next causal conv's time-padded input). `bias` is the previous conv's, so
  that conv runs without one.
- `bias_residual_add_(y, bias, residual)`: y + bias + residual in place, the end of a residual block (its second
  conv runs without its bias).

Layout: channels-last (NDHWC) with the pixel dimensions collapsible to one stride, i.e. an [P, C] matrix of rows C
apart; anything else goes through the torch reference. Numerics are the reference's, rounding where it rounds: the
bias add rounded to x's dtype (as PyTorch's separate add), the norm reduced in fp32, x * (sqrt(C) / max(norm, 1e-12))
rounded once, times gamma (rounded to x's dtype, product rounded), then SiLU in fp32, rounded; the residual add
rounded after the bias and again after the residual. Only the norm's summation order (and the exp inside SiLU)
differ from torch. Deterministic: a fixed launch shape per C, each row reduced in one program in a fixed order,
no atomics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # triton is a Linux-only dependency; elsewhere the reference runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

from kernels.norms import _interpreting, _use_triton, row_tiling

NORM_EPS = 1e-12  # the official RMS_norm divides by F.normalize's clamped norm
USE_TRITON = True  # False: the torch references on CUDA too (bench/bench_vae.py times both)
TILE_ELEMENTS = 4096  # values a program holds (32 a thread at 4 warps, 80 registers): rows = this // next_pow2(C)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [C] (or [C, 1, ...]) vector shaped to broadcast over `like` [B, C, ...], in like's dtype."""
    return v.reshape(like.shape[1], *([1] * (like.dim() - 2))).to(like.dtype)


def rms_norm_silu_ref(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False, out: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, C, ...] (+ bias) -> / ||.||_C * sqrt(C) * gamma (then SiLU) in x's dtype, written into `out` if given.

    The dtype semantics of the model (`vae.RMS_norm` after a conv): the bias added in x's dtype, the norm in fp32
    without an fp32 copy of x, one rounding after the normalisation, gamma applied in x's dtype, SiLU in place."""
    if bias is not None:
        x = x + _per_channel(bias, x)
    C = x.shape[1]
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True, dtype=torch.float32)
    inv = C ** 0.5 / norm.clamp_min_(NORM_EPS)
    if out is None:
        out = torch.empty_like(x)
    torch.mul(x, inv, out=out)
    out.mul_(_per_channel(gamma, x))
    if silu:
        F.silu(out, inplace=True)
    return out


def bias_residual_add_ref(y: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """y += bias (per channel), then y += residual, in place: a conv's bias and a residual block's sum."""
    if bias is not None:
        y.add_(_per_channel(bias, y))
    return y.add_(residual)


if triton is not None:

    from kernels.norms import _TL_DTYPE, _round_fp32

    @triton.jit
    def _tile(n_rows, C, ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        """This program's rows (int64), the columns, their mask and the tile's mask."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_C)
        cmask = cols < C
        return rows.to(tl.int64), cols, cmask, (rows < n_rows)[:, None] & cmask[None, :]

    @triton.jit
    def _inverse_norm(sum_sq, scale):
        """scale / max(||x||, eps) per row from its sum of squares: IEEE sqrt and division, as torch computes them."""
        norm = tl.sqrt_rn(sum_sq)
        return tl.div_rn(tl.zeros_like(norm) + scale, tl.maximum(norm, 1e-12))

    @triton.jit
    def _normalize_silu(x, inv, gamma, SILU: tl.constexpr, FAST_SILU: tl.constexpr, DTYPE: tl.constexpr,
                        HW: tl.constexpr):
        """x * inv, times gamma, then SiLU, each rounded to DTYPE where the reference rounds. FAST_SILU: the SiLU's
        division approximate instead of IEEE."""
        y = _round_fp32(x * inv[:, None], DTYPE, HW)
        y = _round_fp32(y * gamma[None, :], DTYPE, HW)
        if SILU:
            if FAST_SILU:
                y = _round_fp32(y / (1.0 + tl.exp(-y)), DTYPE, HW)
            else:
                y = _round_fp32(tl.div_rn(y, 1.0 + tl.exp(-y)), DTYPE, HW)
        return y

    @triton.jit
    def _rms_norm_silu_kernel(X, GAMMA, BIAS, OUT, n_rows, C, stride_xp, stride_op, scale,
                              SILU: tl.constexpr, HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr, HW: tl.constexpr,
                              ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        rows, cols, cmask, mask = _tile(n_rows, C, ROWS, BLOCK_C)
        x = tl.load(X + rows[:, None] * stride_xp + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:  # masked lanes stay 0: their bias loads as 0 too
            b = _round_fp32(tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32), DTYPE, HW)
            x = _round_fp32(x + b[None, :], DTYPE, HW)
        gamma = _round_fp32(tl.load(GAMMA + cols, mask=cmask, other=0.0).to(tl.float32), DTYPE, HW)
        y = _normalize_silu(x, _inverse_norm(tl.sum(x * x, axis=1), scale), gamma, SILU, False, DTYPE, HW)  # pads: 0
        tl.store(OUT + rows[:, None] * stride_op + cols[None, :], y.to(DTYPE), mask=mask)

    @triton.jit
    def _rms_norm_silu_segments_kernel(X, GAMMA, BIAS, OUT, n_rows, stride_xp, stride_op, scale,
                                       C: tl.constexpr, SEG: tl.constexpr, NSEG: tl.constexpr, ROWS: tl.constexpr,
                                       SILU: tl.constexpr, HAS_BIAS: tl.constexpr, FAST_SILU: tl.constexpr,
                                       DTYPE: tl.constexpr, HW: tl.constexpr):
        """`_rms_norm_silu_kernel` over a row as NSEG segments of SEG lanes (96 = 3 x 32): no padded lanes to
        compute (the power-of-two tile gives C = 96 a third more), the row's squares summed segment by segment,
        then across lanes. FAST_SILU: y / (1 + exp(-y)) by the approximate division instead of the IEEE one."""
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rmask = rows < n_rows
        rows = rows.to(tl.int64)
        xs = ()
        for i in tl.static_range(NSEG):
            cols = i * SEG + tl.arange(0, SEG)
            m = rmask[:, None] & (cols < C)[None, :]
            x = tl.load(X + rows[:, None] * stride_xp + cols[None, :], mask=m, other=0.0).to(tl.float32)
            if HAS_BIAS:
                b = _round_fp32(tl.load(BIAS + cols, mask=cols < C, other=0.0).to(tl.float32), DTYPE, HW)
                x = _round_fp32(x + b[None, :], DTYPE, HW)
            xs = xs + (x,)
        acc = xs[0] * xs[0]
        for i in tl.static_range(1, NSEG):
            acc = acc + xs[i] * xs[i]
        inv = _inverse_norm(tl.sum(acc, axis=1), scale)
        for i in tl.static_range(NSEG):
            cols = i * SEG + tl.arange(0, SEG)
            m = rmask[:, None] & (cols < C)[None, :]
            gamma = _round_fp32(tl.load(GAMMA + cols, mask=cols < C, other=0.0).to(tl.float32), DTYPE, HW)
            y = _normalize_silu(xs[i], inv, gamma, SILU, FAST_SILU, DTYPE, HW)
            tl.store(OUT + rows[:, None] * stride_op + cols[None, :], y.to(DTYPE), mask=m)

    @triton.jit
    def _bias_residual_kernel(Y, BIAS, RES, n_rows, C, stride_yp, stride_rp,
                              HAS_BIAS: tl.constexpr, DTYPE: tl.constexpr, HW: tl.constexpr,
                              ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        rows, cols, cmask, mask = _tile(n_rows, C, ROWS, BLOCK_C)
        y_ptrs = Y + rows[:, None] * stride_yp + cols[None, :]
        y = tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BIAS:
            b = _round_fp32(tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32), DTYPE, HW)
            y = _round_fp32(y + b[None, :], DTYPE, HW)
        r = tl.load(RES + rows[:, None] * stride_rp + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptrs, _round_fp32(y + r, DTYPE, HW).to(DTYPE), mask=mask)


def _as_rows(t: torch.Tensor) -> torch.Tensor | None:
    """t [B, C, ...] as an [P, C] view with unit channel stride and one row stride, or None."""
    moved = t.movedim(1, -1)
    if moved.stride(-1) != 1:
        return None
    try:
        return moved.view(-1, t.shape[1])
    except RuntimeError:
        return None


def _rows_of(*tensors: torch.Tensor) -> list[torch.Tensor] | None:
    """Each tensor as [P, C] rows when they all share the first one's shape and a kernel dtype, else None."""
    first = tensors[0]
    if triton is None or first.dtype not in _TL_DTYPE:
        return None
    rows = [_as_rows(t) if t.shape == first.shape and t.dtype == first.dtype else None for t in tensors]
    return None if any(r is None for r in rows) else rows


def launch_config(C: int) -> dict:
    """Fixed per C (no autotuning): a tile of TILE_ELEMENTS values, 4 warps."""
    block_c = triton.next_power_of_2(C)
    return dict(ROWS=max(1, TILE_ELEMENTS // block_c), BLOCK_C=block_c, num_warps=4, enable_fp_fusion=False)


def _launch(kernel, rows: torch.Tensor, *args, **consts) -> None:
    P, C = rows.shape
    if P == 0:
        return
    cfg = launch_config(C)
    kernel[(triton.cdiv(P, cfg["ROWS"]),)](*args, DTYPE=_TL_DTYPE[rows.dtype], HW=not _interpreting(), **consts, **cfg)


# The segmented norm's launch: a row as NSEG equal segments (`kernels.norms.row_tiling`: 96 = 3 x 32, 192 = 3 x 64,
# 384 = 3 x 128), NORM_ROWS rows a program, NORM_WARPS warps; fixed (no autotuning). Why: the power-of-two tile
# computes a third more lanes than C = 96 has, and it ran at ~1 TB/s where the bias + residual pass moves ~3 TB/s
# (the norm is bound by instructions, not bytes): 36 SASS instructions a value against 46 compiled offline for sm_90
# (`bench/experiments/offline_sass.py vae-norm` / `vae-norm-seg`). Measured in a 480p decode on an H100 (session 25,
# `bench/bench_vae.py --iters 2 --no-diffusers`): 744 against 803 ms. The row's squares are summed in another order
# than the tile's, so turning it on changed frames (`turbo_batch.NUMERICS_VERSION` 3). False: the power-of-two tile.
NORM_ROWS, NORM_WARPS = 64, 4
SEGMENTED_NORM = True
FAST_SILU = False  # True: the SiLU's division approximate (not torch's IEEE one); the benchmark's switch


def rms_norm_silu_triton(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False, out: torch.Tensor | None = None,
                         bias: torch.Tensor | None = None, *, segments: bool | None = None,
                         rows_per_program: int | None = None,
                         num_warps: int | None = None, fast_silu: bool | None = None) -> torch.Tensor:
    """The Triton kernel on channels-last x and out (see the module docstring); the reference for other layouts.
    Keywords: benchmark overrides (`segments`: the segmented kernel or the power-of-two tile, default SEGMENTED_NORM;
    its launch; `fast_silu`)."""
    if out is None:
        out = torch.empty_like(x)
    rows = _rows_of(x, out)
    if rows is None:
        return rms_norm_silu_ref(x, gamma, silu, out, bias)
    (xr, orows), C = rows, x.shape[1]
    b = bias.reshape(-1) if bias is not None else gamma
    if not (SEGMENTED_NORM if segments is None else segments):
        _launch(_rms_norm_silu_kernel, xr, xr, gamma.reshape(-1), b, orows, xr.shape[0], C, xr.stride(0),
                orows.stride(0), C ** 0.5, SILU=silu, HAS_BIAS=bias is not None)
        return out
    if xr.shape[0] == 0:
        return out
    seg, nseg = row_tiling(C)
    n_rows = rows_per_program or NORM_ROWS
    _rms_norm_silu_segments_kernel[(triton.cdiv(xr.shape[0], n_rows),)](
        xr, gamma.reshape(-1), b, orows, xr.shape[0], xr.stride(0), orows.stride(0), C ** 0.5,
        C=C, SEG=seg, NSEG=nseg, ROWS=n_rows, SILU=silu, HAS_BIAS=bias is not None,
        FAST_SILU=FAST_SILU if fast_silu is None else fast_silu, DTYPE=_TL_DTYPE[x.dtype], HW=not _interpreting(),
        num_warps=num_warps or NORM_WARPS, enable_fp_fusion=False)
    return out


def bias_residual_add_triton(y: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """The Triton kernel, in place on channels-last y; the reference for other layouts."""
    rows = _rows_of(y, residual)
    if rows is None:
        return bias_residual_add_ref(y, bias, residual)
    yr, rr = rows
    b = bias.reshape(-1) if bias is not None else yr
    _launch(_bias_residual_kernel, yr, yr, b, rr, yr.shape[0], y.shape[1], yr.stride(0), rr.stride(0),
            HAS_BIAS=bias is not None)
    return y


def uses_kernels(x: torch.Tensor) -> bool:
    """Whether the Triton kernels run for x: on CUDA (or under TRITON_INTERPRET=1) unless USE_TRITON is off. The VAE
    then leaves its residual blocks' conv biases to these passes."""
    return USE_TRITON and _use_triton(x)


def rms_norm_silu(x: torch.Tensor, gamma: torch.Tensor, silu: bool = False, out: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
    """The VAE's RMS norm (+ the previous conv's bias, + SiLU): the Triton kernel where `uses_kernels`, else the
    reference."""
    if uses_kernels(x):
        return rms_norm_silu_triton(x, gamma, silu, out, bias)
    return rms_norm_silu_ref(x, gamma, silu, out, bias)


def bias_residual_add_(y: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """y += bias, y += residual in place: the Triton kernel where `uses_kernels`, else the reference."""
    if uses_kernels(y):
        return bias_residual_add_triton(y, bias, residual)
    return bias_residual_add_ref(y, bias, residual)


__all__ = ["bias_residual_add_", "bias_residual_add_ref", "bias_residual_add_triton", "launch_config",
           "rms_norm_silu", "rms_norm_silu_ref", "rms_norm_silu_triton", "uses_kernels"]
