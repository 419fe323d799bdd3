"""Cross-attention over a short text context whose padding is collapsed into one weighted key.

Why: Wan pads every prompt's umT5 embedding with zero rows to 512 tokens and attends to all of them, unmasked. The
zero rows all embed to the same key and value, so attending to n of them is attending to one of them with its logit
raised by ln n: exact, up to the order of the sums. A prompt of ~50 tokens then needs 65 keys instead of 512, and the
cross-attention, which reads and writes every video token in every block, goes from compute-bound to a pass over q
and o. `WanDiT` builds such a context (`collapse_text_padding`) on its fused path.

`cross_attention(q, k, v, pad_count)`: q (B, Lq, H, D), k and v (B, S, H, D); the last key row stands for `pad_count`
identical keys (`pad_count` 0: every row is one key, as in plain SDPA). The Triton kernel follows Triton's
fused-attention tutorial (online softmax in exp2, fp32 statistics and accumulator, P rounded to the inputs' dtype for
the P V MMA), one program per 64 queries of one head looping over the keys in 64-key blocks, the pad key's
ln(pad_count) added in fp32. Deterministic: a fixed launch configuration, no atomics. `BACKEND = "sdpa"` runs the
same function through PyTorch's SDPA instead, the pad weight split into bf16 logit offsets (`cross_attention_sdpa`).

Status (H100, session 19, `bench/experiments/cross_attention_sweep.py`): exact to 4.8e-4 against the float32
reference (SDPA over the 512 expanded rows: 2.8e-3). 64 x 64 tiles, 4 warps, 2 stages (187 registers, two programs
an SM) is the fastest launch shape at every size measured: at the 1.3B 480p shape 0.126 ms at 64 rows, 0.155 at 128,
0.213 at 256, against 0.185 ms for cuDNN's SDPA over all 512 rows (session 18's 128 x 64 x 8 warps: 0.179 / 0.204 /
0.260); the SDPA backend 0.112 / 0.173 / 0.239 (cuDNN with a bias; without one, over the same keys, 0.080). Inside
the FP8 + SLA forward through graphs: 142.5 ms against 145.0 ms with a 40-token prompt (1.7%), 147.3 against 148.0 ms
with a 100-token one. The DiT collapses prompts of up to `dit.COLLAPSE_MAX_ROWS` (128) tokens.
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

try:  # triton is a Linux-only dependency; CPU-only platforms use the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

BLOCK_M, BLOCK_N = 64, 64
NUM_WARPS, NUM_STAGES = 4, 2
# "triton": the kernel below; "sdpa": PyTorch's SDPA (cuDNN on Hopper) with the pad weight as an additive bias
# (`cross_attention_sdpa`). bench/experiments/cross_attention_sweep.py measures both.
BACKEND = "triton"
PAD_TERMS = 3  # the SDPA path spreads the pad key's weight over this many copies of it (`pad_weight_biases`)
KEY_ALIGN = 8  # the SDPA path's key count is padded to a multiple of this with keys of zero weight


def cross_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + bias) v in float32 (or float64), bias ln(pad_count) on the last key (none when 0);
    returned in q's dtype."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf = (t.to(dtype).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
    s = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if pad_count:
        s[..., -1] += math.log(pad_count)
    return (s.softmax(dim=-1) @ vf).transpose(1, 2).to(q.dtype)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int) -> None:
    if q.dim() != 4 or k.shape != v.shape or k.dim() != 4:
        raise ValueError(f"cross_attention: q (B, Lq, H, D), k and v (B, S, H, D); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
        raise ValueError(f"cross_attention: q {tuple(q.shape)} and k {tuple(k.shape)} differ in batch, heads or "
                         "head_dim")
    if pad_count < 0 or (pad_count and k.shape[1] < 1):
        raise ValueError(f"cross_attention: pad_count must be >= 0 with at least one key, got {pad_count}")


def cross_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
    """(B, Lq, H, D) attention output; on CUDA the `BACKEND`'s (the Triton kernel also under TRITON_INTERPRET=1),
    else the reference."""
    if BACKEND == "sdpa" and q.is_cuda:
        return cross_attention_sdpa(q, k, v, pad_count)
    use_triton = triton is not None and (q.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")
    D = q.shape[-1]
    if not use_triton or D < 16 or D & (D - 1):
        _check(q, k, v, pad_count)
        return cross_attention_reference(q, k, v, pad_count)
    return cross_attention_triton(q, k, v, pad_count)  # checks its inputs


def pad_weight_biases(n: int, dtype: torch.dtype, terms: int = PAD_TERMS) -> list[float]:
    """Logit offsets b_1..b_terms, each a value of `dtype`, with sum(exp(b_i)) = n to within ~1e-5 relative
    (-inf for terms not needed).

    Why: SDPA adds a bias of q's dtype, and ln n rounded to bf16 is off by up to 1.6%, which would reweigh the padding
    by as much. Greedy instead: each offset the largest value of `dtype` whose exp fits in what remains of n, the
    last rounded to nearest; each term shrinks the remainder by the dtype's relative step (2^-7 for bf16).
    """
    out, rest = [], float(n)
    for i in range(terms):
        if rest <= 0:
            out.append(float("-inf"))
            continue
        near = torch.tensor([math.log(rest)], dtype=torch.float64).to(dtype)
        if i < terms - 1:
            bits = near.view(torch.int16) if near.element_size() == 2 else near.view(torch.int32)
            cands = [float(near)] + [float((bits + d).view(dtype)) for d in (-1, 1)]
            near_val = max(c for c in cands if math.exp(c) <= rest)
        else:
            near_val = float(near)
        out.append(near_val)
        rest -= math.exp(near_val)
    return out


_BIAS_CACHE: dict = {}


def _pad_bias(keys: int, pad_count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[keys + PAD_TERMS - 1 rounded up to KEY_ALIGN] additive bias: 0 on the keys before the pad key, the
    `pad_weight_biases` on the pad key's copies, -inf-like (dtype's min) on the alignment keys. Cached: built once
    per shape, outside any CUDA-graph capture (the first forward is eager)."""
    key = (keys, pad_count, dtype, device)
    if key not in _BIAS_CACHE:
        total = -(-(keys + PAD_TERMS - 1) // KEY_ALIGN) * KEY_ALIGN
        bias = torch.full((total,), torch.finfo(dtype).min, dtype=torch.float64)
        bias[: keys - 1] = 0.0
        bias[keys - 1: keys - 1 + PAD_TERMS] = torch.tensor(pad_weight_biases(pad_count, dtype), dtype=torch.float64)
        _BIAS_CACHE[key] = bias.clamp(min=torch.finfo(dtype).min).to(dtype).to(device)
    return _BIAS_CACHE[key]


def cross_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
    """`cross_attention` through `F.scaled_dot_product_attention` with an additive bias: the pad key (the last row)
    copied PAD_TERMS times with the `pad_weight_biases` on their logits, the key count padded to KEY_ALIGN with
    keys the bias removes (dtype's min: exp underflows to exactly 0)."""
    _check(q, k, v, pad_count)
    qt = q.transpose(1, 2)
    if not pad_count:
        return F.scaled_dot_product_attention(qt, k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    S = k.shape[1]
    bias = _pad_bias(S, pad_count, q.dtype, q.device)
    extra = bias.shape[0] - S
    k2, v2 = (torch.cat([t, t[:, -1:].expand(-1, extra, -1, -1)], dim=1).transpose(1, 2) for t in (k, v))
    out = F.scaled_dot_product_attention(qt, k2, v2, attn_mask=bias.expand(q.shape[0], 1, 1, -1))
    return out.transpose(1, 2)


def cross_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
    _check(q, k, v, pad_count)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    B, Lq, H, D = q.shape
    out = torch.empty((B, Lq, H, D), device=q.device, dtype=q.dtype)
    _cross_attention_kernel[(triton.cdiv(Lq, BLOCK_M), B * H)](
        q, k, v, out,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3],
        Lq, k.shape[1], H,
        1.0 / math.sqrt(D) * 1.4426950408889634,  # softmax scale in the exp2 domain
        math.log2(pad_count) if pad_count else 0.0,
        HAS_PAD=pad_count > 0, D=D, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
        num_warps=NUM_WARPS, num_stages=NUM_STAGES,
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
