"""Cross-attention over a short text context whose padding is collapsed into one weighted key.

Why: Wan pads every prompt's umT5 embedding with zero rows to 512 tokens and attends to all of them, unmasked. The
zero rows all embed to the same key and value, so attending to n of them is attending to one of them with its logit
raised by ln n: exact, up to the order of the sums. A prompt of ~50 tokens then needs 65 keys instead of 512, and the
cross-attention, which reads and writes every video token in every block, goes from compute-bound to a pass over q
and o. `WanDiT` builds such a context (`collapse_text_padding`) on its fused path.

`cross_attention(q, k, v, pad_count)`: q (B, Lq, H, D), k and v (B, S, H, D); the last key row stands for `pad_count`
identical keys (`pad_count` 0: every row is one key, as in plain SDPA). The Triton kernel follows Triton's
fused-attention tutorial (online softmax in exp2, fp32 statistics and accumulator, P rounded to the inputs' dtype for
the P V MMA), one program per 128 queries of one head looping over the keys in 64-key blocks, the pad key's
ln(pad_count) added in fp32. Deterministic: a fixed launch configuration, no atomics.

`q_norm`: the layer's RMSNorm weight over all heads (Wan's `norm_q`); q then arrives as the raw projection and the
kernel normalizes it on the way in, rounding where `norms.rmsnorm(..., weight_in_fp32=True)` rounds. One program
then owns BLOCK_M_NORM rows and loops over the heads twice: the row's sum of squares, then each head's attention
(the second read of q comes mostly from L2). This saves the separate RMSNorm pass over q, a read and a write of
every video token's q in every block.
"""
from __future__ import annotations

import math
import os

import torch

try:  # triton is a Linux-only dependency; CPU-only platforms use the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

BLOCK_M, BLOCK_N = 128, 64
NUM_WARPS, NUM_STAGES = 8, 2
BLOCK_M_NORM, NUM_WARPS_NORM = 64, 8  # 4 warps spill at 64 x 128 (offline_sass.py cross-attention-norm)
FUSE_Q_NORM = True  # False: the q RMSNorm runs as its own kernel first (benchmarks compare the two)


def cross_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias) v in float32 (or float64), bias ln(pad_count) on the last key (none when 0);
    returned in q's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pad_count:
        s[..., -1] += math.log(pad_count)
    return (s.softmax(dim=-1) @ vf).transpose(1, 2).to(q.dtype)


def normed_q_reference(q: torch.Tensor, q_norm: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of q's rows over all heads, rounded as `norms.rmsnorm(..., weight_in_fp32=True)`; (B, L, H, D)."""
    from kernels.norms import rmsnorm_ref

    return rmsnorm_ref(q.flatten(2), q_norm, eps, weight_in_fp32=True).unflatten(2, q.shape[2:])


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"cross_attention: q (B, Lq, H, D), k and v (B, S, H, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(f"cross_attention: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, heads or "
                         "head_dim")
    if pad_count < 0 or (pad_count and k.shape[1] < 1):
        raise ValueError(f"cross_attention: pad_count must be >= 0 with at least one key, got {pad_count}")


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0,
                    q_norm: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """(B, Lq, H, D) attention output; the Triton kernel on CUDA (or under TRITON_INTERPRET=1), else the reference.
    With `q_norm`, q is first RMS-normalized over all its heads (see the module docstring)."""
    _check(q, k, v, pad_count)
    use_triton = triton is not None and (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
    D = q.shape[-1]
    if not use_triton or D < 16 or D & (D - 1):
        q = q if q_norm is None else normed_q_reference(q, q_norm, eps)
        return cross_attention_reference(q, k, v, pad_count)
    if q_norm is not None and not FUSE_Q_NORM:
        from kernels.norms import rmsnorm

        q, q_norm = rmsnorm(q.flatten(2), q_norm, eps, weight_in_fp32=True).unflatten(2, q.shape[2:]), None
    return cross_attention_triton(q, k, v, pad_count, q_norm, eps)


def cross_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0,
                           q_norm: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    _check(q, k, v, pad_count)
    B, Lq, H, D = q.shape
    if q_norm is not None and q_norm.shape != (H * D,):
        raise ValueError(f"cross_attention: q_norm must have H * D = {H * D} weights, got {tuple(q_norm.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    S = k.shape[1]
    out = torch.empty((B, Lq, H, D), device=q.device, dtype=q.dtype)
    scales = (1.0 / math.sqrt(D) * 1.4426950408889634,  # softmax scale in the exp2 domain
              math.log2(pad_count) if pad_count else 0.0)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3])
    if q_norm is None:
        _cross_attention_kernel[(triton.cdiv(Lq, BLOCK_M), B * H)](
            q, k, v, out, *strides, Lq, S, H, *scales,
            HAS_PAD=pad_count > 0, D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
            num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        )
    else:
        _normed_cross_attention_kernel[(triton.cdiv(Lq, BLOCK_M_NORM), B)](
            q, q_norm.contiguous(), k, v, out, *strides, Lq, S, H, float(eps), *scales,
            HAS_PAD=pad_count > 0, D=D, BLOCK_M=BLOCK_M_NORM, BLOCK_N=BLOCK_N,
            num_warps=NUM_WARPS_NORM, num_stages=NUM_STAGES,
        )
    return out


if triton is not None:

    @triton.jit
    def _attend(q, k_base, v_base, stride_kl, stride_vl, S, qk_scale, log2_pad,
                HAS_PAD: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """softmax(q k^T * scale [+ log2 pad on key S - 1]) v for one q tile over S keys, in fp32."""
        cols = tl.arange(0, D)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, S, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            in_range = keys < S
            k = tl.load(k_base + keys[:, None] * stride_kl + cols[None, :], mask=in_range[:, None], other=0.0)
            v = tl.load(v_base + keys[:, None] * stride_vl + cols[None, :], mask=in_range[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * qk_scale
            if HAS_PAD:
                s = s + tl.where(keys == S - 1, log2_pad, 0.0)[None, :]
            s = tl.where(in_range[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        return acc / l_i[:, None]

    @triton.jit
    def _cross_attention_kernel(
        Q, K, V, O,
        stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
        stride_vb, stride_vl, stride_vh, stride_ob, stride_ol, stride_oh,
        Lq, S, H,
        qk_scale, log2_pad,
        HAS_PAD: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, D)
        row_mask = rows[:, None] < Lq
        q = tl.load(Q + b * stride_qb + h * stride_qh + rows[:, None] * stride_ql + cols[None, :], mask=row_mask,
                    other=0.0)
        out = _attend(q, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh, stride_kl, stride_vl, S,
                      qk_scale, log2_pad, HAS_PAD, D, BLOCK_M, BLOCK_N)
        tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ol + cols[None, :],
                 out.to(O.dtype.element_ty), mask=row_mask)

    @triton.jit
    def _normed_cross_attention_kernel(
        Q, W, K, V, O,
        stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
        stride_vb, stride_vl, stride_vh, stride_ob, stride_ol, stride_oh,
        Lq, S, H, eps,
        qk_scale, log2_pad,
        HAS_PAD: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """One program: BLOCK_M rows of one batch element, every head."""
        pid_m = tl.program_id(0)
        b = tl.program_id(1)
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = tl.arange(0, D)
        row_mask = rows[:, None] < Lq
        q_rows = Q + b * stride_qb + rows[:, None] * stride_ql + cols[None, :]
        sq = tl.zeros([BLOCK_M], tl.float32)
        for h in range(H):
            x = tl.load(q_rows + h * stride_qh, mask=row_mask, other=0.0).to(tl.float32)
            sq += tl.sum(x * x, 1)
        r = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32), tl.math.sqrt_rn(sq / (H * D) + eps))
        for h in range(H):
            x = tl.load(q_rows + h * stride_qh, mask=row_mask, other=0.0).to(tl.float32)
            w = tl.load(W + h * D + cols).to(tl.float32)
            q = ((x * r[:, None]) * w[None, :]).to(Q.dtype.element_ty)
            out = _attend(q, K + b * stride_kb + h * stride_kh, V + b * stride_vb + h * stride_vh, stride_kl, stride_vl,
                          S, qk_scale, log2_pad, HAS_PAD, D, BLOCK_M, BLOCK_N)
            tl.store(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_ol + cols[None, :],
                     out.to(O.dtype.element_ty), mask=row_mask)
