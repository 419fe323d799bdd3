"""The VAE's 3x3x3 causal conv as an implicit GEMM in Triton, for channels-last activations, with epilogues that do
the residual blocks' elementwise work.

Why: the decoder's full-resolution (96-channel) blocks are ~42% of a 480p decode, and besides their convs much of
their time is elementwise passes over 300 MB tensors (the RMS norm + SiLU at ~1 TB/s, the bias + residual add).
Every program here holds all C_out channels of its pixels, so its epilogue can apply the next RMS norm + SiLU (a
reduction over the channels) or add the residual, and write the result where the next conv reads it: each output is
written once instead of written, read and written again, which cuDNN's convs cannot do. The conv alone is 1.67x
cuDNN's default kernel on one chunk (1.88 vs 3.15 ms on an H200) and as fast as the one its mode B heuristic picks
inside the decode (session 22). Counted per output value, an implicit GEMM reads every input pixel once per tap, so
its L2 traffic per FLOP is 1 / C_out; this kernel computes FT consecutive output frames per program, so the input
frame shared by neighbouring output frames' temporal taps is loaded once for all of them (FT + 2 frames a tap
instead of 3 * FT).

Shapes: x [B, C, T + 2, H, W] (already padded in time, as `vae.CausalConv3d` builds it; the spatial zero padding of
1 is the loads' masks), weight [C_out, C, 3, 3, 3], out [B, C_out, T, H, W], all channels-last (NDHWC).
Each program owns BLOCK_M consecutive pixels of a frame (raster order) x all C_out channels (padded to a power of two
in the weight's packed copy) x FT frames; its K loop runs over the 9 spatial taps x C in BLOCK_K chunks, and per
chunk over the 3 temporal taps. fp32 accumulation in that fixed order (no split-K, no atomics): the same bits on
every run; they are not cuDNN's bits (another summation order).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # triton is a Linux-only dependency; elsewhere the reference runs
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

from kernels.norms import _TL_DTYPE, _interpreting
from kernels.vae_elementwise import rms_norm_silu_ref

# (BLOCK_M, BLOCK_K, FT, num_warps, num_stages) per channel count (C_in = C_out): fixed, never autotuned (a launch
# shape is part of the bits). Only 96: measured on an H200 (bench/experiments/vae_conv_forms.py, one 4-frame chunk at
# 480x832) 1.883 ms, 422 TFLOP/s, against cuDNN's 3.149 ms (its best other form, padded to 128 outputs, 2.916 ms);
# FT = 1 at 128 / 256 rows 2.32-2.39 / 2.09 ms. At 192 channels cuDNN runs at 530-547 TFLOP/s and these tiles
# (256 padded outputs) do not fit shared memory, so it keeps them.
CONV_LAUNCH = {96: (128, 32, 2, 8, 3)}


def causal_conv3d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The conv as `vae.CausalConv3d` runs it on its time-padded buffer: cuDNN / ATen, spatial padding 1."""
    return F.conv3d(x, weight, bias, padding=(0, 1, 1))


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """[C_out, C, 3, 3, 3] -> [27 * C, NP] with NP = next_pow2(C_out), zero columns past C_out: row
    ((kt * 3 + kh) * 3 + kw) * C + c holds w[:, c, kt, kh, kw], the B operand of every tap's K chunk."""
    c_out, c_in = weight.shape[:2]
    npad = triton.next_power_of_2(c_out) if triton is not None else c_out
    packed = weight.permute(2, 3, 4, 1, 0).reshape(27 * c_in, c_out)
    return F.pad(packed, (0, npad - c_out)).contiguous()


if triton is not None:

    @triton.jit
    def _tap_loads(x_ptr, pix, ci, valid, frame0, T_PAD, FRAME, C: tl.constexpr, F_IDX: tl.constexpr):
        """The [BLOCK_M, BLOCK_K] A tile of input frame frame0 + F_IDX at pixel offsets `pix` (masked rows: the zero
        padding in space). A frame past the buffer (the second output frame of an odd T) reads the last one
        instead: it only feeds an output frame that is never stored."""
        f = tl.minimum(frame0 + F_IDX, T_PAD - 1)
        ptrs = x_ptr + f.to(tl.int64) * FRAME + pix[:, None] + ci[None, :]
        # the channel term only gives the mask the tile's shape (it is uniform along each 16-byte vector)
        return tl.load(ptrs, mask=valid[:, None] & (ci < C)[None, :], other=0.0)

    from kernels.norms import _round_fp32
    from kernels.vae_elementwise import rms_norm_silu_rows

    @triton.jit
    def _output_rows(acc, bias, gamma, norm_scale, res_ptrs, mask, HAS_BIAS: tl.constexpr, NORM: tl.constexpr,
                     RESIDUAL: tl.constexpr, DTYPE: tl.constexpr, HW: tl.constexpr):
        """One output frame's [BLOCK_M, NP] accumulator as the values to store (fp32 on DTYPE's grid): rounded, plus
        the bias (rounded again, as PyTorch adds a conv's bias after the conv), then with NORM the RMS norm + SiLU of
        each pixel's channels, exactly as `vae_elementwise.rms_norm_silu` computes it from the stored conv output, or
        with RESIDUAL plus the residual (rounded), as `vae_elementwise.bias_residual_add_` does."""
        y = _round_fp32(acc, DTYPE, HW)
        if HAS_BIAS:
            y = _round_fp32(y + bias[None, :], DTYPE, HW)
        if NORM:
            y = rms_norm_silu_rows(y, gamma, norm_scale, True, DTYPE, HW)
        if RESIDUAL:
            y = _round_fp32(y + tl.load(res_ptrs, mask=mask, other=0.0).to(tl.float32), DTYPE, HW)
        return y

    @triton.jit
    def _conv3d_kernel(
        x_ptr, w_ptr, b_ptr, g_ptr, r_ptr, out_ptr, T, T_PAD, H, W, x_batch_stride, r_batch_stride, out_batch_stride,
        norm_scale, C: tl.constexpr, C_OUT: tl.constexpr, NP: tl.constexpr, HAS_BIAS: tl.constexpr,
        NORM: tl.constexpr, RESIDUAL: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, FT: tl.constexpr, DTYPE: tl.constexpr, HW_ROUND: tl.constexpr,
    ):
        pid_p, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        HW = H * W
        p = pid_p * BLOCK_M + tl.arange(0, BLOCK_M)
        h, w = p // W, p % W
        inside = p < HW
        t0 = pid_t * FT
        FRAME = HW * C
        x_ptr += b.to(tl.int64) * x_batch_stride
        cols = tl.arange(0, NP)
        kc = tl.arange(0, BLOCK_K)
        acc0 = tl.zeros([BLOCK_M, NP], dtype=tl.float32)
        acc1 = tl.zeros([BLOCK_M, NP], dtype=tl.float32)
        CHUNKS: tl.constexpr = C // BLOCK_K
        for s in range(0, 9 * CHUNKS):
            tap = s // CHUNKS
            c0 = (s % CHUNKS) * BLOCK_K
            hh = h + (tap // 3 - 1)
            ww = w + (tap % 3 - 1)
            valid = inside & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            pix = (hh * W + ww) * C
            ci = tl.max_contiguous(tl.multiple_of(c0 + kc, BLOCK_K), BLOCK_K)
            # B tiles of the three temporal taps of this spatial tap and channel chunk
            w_rows = (tap * C + ci)[:, None] * NP + cols[None, :]
            b0 = tl.load(w_ptr + w_rows)
            b1 = tl.load(w_ptr + 9 * C * NP + w_rows)
            b2 = tl.load(w_ptr + 18 * C * NP + w_rows)
            a0 = _tap_loads(x_ptr, pix, ci, valid, t0, T_PAD, FRAME, C, 0)
            a1 = _tap_loads(x_ptr, pix, ci, valid, t0, T_PAD, FRAME, C, 1)
            a2 = _tap_loads(x_ptr, pix, ci, valid, t0, T_PAD, FRAME, C, 2)
            acc0 = tl.dot(a0, b0, acc0)
            acc0 = tl.dot(a1, b1, acc0)
            acc0 = tl.dot(a2, b2, acc0)
            if FT == 2:
                a3 = _tap_loads(x_ptr, pix, ci, valid, t0, T_PAD, FRAME, C, 3)
                acc1 = tl.dot(a1, b0, acc1)
                acc1 = tl.dot(a2, b1, acc1)
                acc1 = tl.dot(a3, b2, acc1)
        bias = tl.load(b_ptr + cols, mask=cols < C_OUT, other=0.0).to(tl.float32)  # dummies unless used
        gamma = _round_fp32(tl.load(g_ptr + cols, mask=cols < C_OUT, other=0.0).to(tl.float32), DTYPE, HW_ROUND)
        out_ptr += b.to(tl.int64) * out_batch_stride
        r_ptr += b.to(tl.int64) * r_batch_stride
        offs = p[:, None] * C_OUT + cols[None, :]
        mask = inside[:, None] & (cols < C_OUT)[None, :]
        OUT_FRAME = HW * C_OUT
        at0 = t0.to(tl.int64) * OUT_FRAME + offs
        y0 = _output_rows(acc0, bias, gamma, norm_scale, r_ptr + at0, mask, HAS_BIAS, NORM, RESIDUAL, DTYPE, HW_ROUND)
        tl.store(out_ptr + at0, y0.to(DTYPE), mask=mask)
        if FT == 2:
            at1 = at0 + OUT_FRAME
            mask1 = mask & (p * 0 + t0 + 1 < T)[:, None]  # a [BLOCK_M] term: the interpreter mis-types a scalar
            y1 = _output_rows(acc1, bias, gamma, norm_scale, r_ptr + at1, mask1, HAS_BIAS, NORM, RESIDUAL, DTYPE,
                              HW_ROUND)                   # bool in a mask
            tl.store(out_ptr + at1, y1.to(DTYPE), mask=mask1)


def supported(x: torch.Tensor, weight: torch.Tensor, launch: tuple | None = None) -> bool:
    """Whether `causal_conv3d_triton` takes these: a float dtype, channels-last, a 3x3x3 kernel, and either a launch
    given (benchmarks, tests) whose BLOCK_K splits the input channels, or a channel count of CONV_LAUNCH in and out."""
    if triton is None or weight.shape[2:] != (3, 3, 3) or x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        return False
    if launch is None:
        launch = CONV_LAUNCH.get(x.shape[1])
        if launch is None or weight.shape[0] != x.shape[1]:
            return False
    return x.shape[1] % launch[1] == 0 and x.is_contiguous(memory_format=torch.channels_last_3d)


def causal_conv3d_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           gamma: torch.Tensor) -> torch.Tensor:
    """What the kernel computes with a norm epilogue: the conv with its bias, then the VAE's RMS norm + SiLU."""
    return rms_norm_silu_ref(causal_conv3d_ref(x, weight, None), gamma, True, bias=bias)


def frames_layout_ok(out: torch.Tensor) -> bool:
    """An output [B, C, T, H, W] whose frames are channels-last and packed (any batch stride): e.g. the slice of the
    next conv's time-padded buffer after its padding frames."""
    _, c, t, h, w = out.shape
    s = out.stride()
    return s[1] == 1 and s[3:] == (w * c, c) and (t == 1 or s[2] == h * w * c)


def causal_conv3d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         packed: torch.Tensor | None = None, launch: tuple | None = None,
                         out: torch.Tensor | None = None, norm_gamma: torch.Tensor | None = None,
                         residual: torch.Tensor | None = None) -> torch.Tensor:
    """`causal_conv3d_ref` by the implicit-GEMM kernel; `packed`: `pack_weight(weight)` computed once by the caller;
    `launch`: (BLOCK_M, BLOCK_K, FT, num_warps, num_stages), benchmarks only. `out`: where to write (frames
    channels-last, e.g. a slice of the next conv's time-padded buffer). Epilogues, each saving a pass over the output:
    `norm_gamma` applies the VAE's RMS norm with this gamma and SiLU to the output (`causal_conv3d_norm_ref`), so the
    next conv's input is written once instead of written, read and written again; `residual` (the output's shape,
    frames channels-last) is added after the bias, as `vae_elementwise.bias_residual_add_` adds it."""
    B, C, T_pad, H, W = x.shape
    c_out = weight.shape[0]
    T = T_pad - 2
    if not supported(x, weight, launch):
        raise ValueError(f"causal_conv3d_triton: unsupported input {tuple(x.shape)} {x.dtype} / weight "
                         f"{tuple(weight.shape)}")
    block_m, block_k, ft, warps, stages = launch or CONV_LAUNCH[C]
    packed = pack_weight(weight).to(x.dtype) if packed is None else packed
    if out is None:
        out = torch.empty((B, c_out, T, H, W), dtype=x.dtype, device=x.device, memory_format=torch.channels_last_3d)
    elif out.shape != (B, c_out, T, H, W) or out.dtype != x.dtype or not frames_layout_ok(out):
        raise ValueError(f"causal_conv3d_triton: out must be {x.dtype} [{B}, {c_out}, {T}, {H}, {W}] with "
                         f"channels-last frames, got {out.dtype} {tuple(out.shape)} strides {out.stride()}")
    if residual is not None and (residual.shape != out.shape or residual.dtype != x.dtype
                                 or not frames_layout_ok(residual)):
        raise ValueError(f"causal_conv3d_triton: residual must be {x.dtype} {tuple(out.shape)} with channels-last "
                         f"frames, got {residual.dtype} {tuple(residual.shape)} strides {residual.stride()}")
    if norm_gamma is not None and residual is not None:
        raise ValueError("causal_conv3d_triton: one epilogue at a time (norm_gamma or residual)")
    if out.numel() == 0:
        return out
    grid = (triton.cdiv(H * W, block_m), triton.cdiv(T, ft), B)
    _conv3d_kernel[grid](
        x, packed, bias if bias is not None else packed,
        norm_gamma.reshape(-1) if norm_gamma is not None else packed, residual if residual is not None else out,
        out, T, T_pad, H, W, x.stride(0), (residual if residual is not None else out).stride(0), out.stride(0),
        float(c_out) ** 0.5, C=C, C_OUT=c_out, NP=packed.shape[1], HAS_BIAS=bias is not None,
        NORM=norm_gamma is not None, RESIDUAL=residual is not None,
        BLOCK_M=block_m, BLOCK_K=block_k, FT=ft, DTYPE=_TL_DTYPE[x.dtype], HW_ROUND=not _interpreting(),
        num_warps=warps, num_stages=stages,
    )
    return out
