"""Experimental SLA attention-kernel variants (run_sla_variants.py times them; none beat the production kernel,
so none is part of the package). Same math and launch grid as kernels/sla.py's fused kernel, with switches:

* POLY: the second k-block's exponentials via a Cody-Waite split + degree-3 minimax polynomial on the FMA pipe
  (relative error 7.5e-5), to offload the MUFU unit as FlashAttention-4 does;
* LOOKAHEAD: QK^T of the next pair of k-blocks is issued before the softmax of the current pair (FA3's
  intra-warpgroup overlap, written as a software pipeline);
* WS: Triton's automatic warp specialization over the pair loop, K/V through device-side TMA descriptors.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kernels import sla


@triton.jit
def _exp2_poly(x):
    """2^x for x <= 0 on the FMA pipe (Cody-Waite split + degree-3 minimax, rel err 7.5e-5)."""
    x = tl.maximum(x, -125.0)
    j = x + 12582912.0
    n = j - 12582912.0
    f = x - n
    p = f * 0.055170250079489135 + 0.24260790199985527
    p = p * f + 0.693260926275332
    p = p * f + 0.9999282805831519
    bits = p.to(tl.int32, bitcast=True) + (j.to(tl.int32, bitcast=True) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _softmax_pv_pair(acc, l_i, m_i, qk_a, qk_b, v_a, v_b, qk_scale, POLY_B: tl.constexpr):
    m_ij = tl.maximum(m_i, tl.maximum(tl.max(qk_a, axis=1), tl.max(qk_b, axis=1)) * qk_scale)
    p_a = tl.math.exp2(qk_a * qk_scale - m_ij[:, None])
    if POLY_B:
        p_b = _exp2_poly(qk_b * qk_scale - m_ij[:, None])
    else:
        p_b = tl.math.exp2(qk_b * qk_scale - m_ij[:, None])
    alpha = tl.math.exp2(m_i - m_ij)
    l_i = l_i * alpha + (tl.sum(p_a, axis=1) + tl.sum(p_b, axis=1))
    acc = acc * alpha[:, None]
    acc = tl.dot(p_a.to(v_a.dtype), v_a, acc)
    acc = tl.dot(p_b.to(v_b.dtype), v_b, acc)
    return acc, l_i, m_ij


@triton.jit
def _attn_variant_kernel(
    Q, K, V, O, KEPT, KVW, KSUM, BIAS,
    stride_qb, stride_ql, stride_qh,
    stride_kb, stride_kl, stride_kh,
    stride_vb, stride_vl, stride_vh,
    stride_ob, stride_ol, stride_oh,
    stride_ksum, L, H, n_keep, qk_scale, eps_over_len,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    LOOKAHEAD: tl.constexpr, POLY: tl.constexpr, WS: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    n_qblocks = tl.num_programs(0)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    row_real = (offs_m < L)[:, None]
    q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :]
    q = tl.load(q_ptrs, mask=row_real, other=0.0)
    k_tile = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :]
    v_tile = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :]
    kept = KEPT + (pid_bh.to(tl.int64) * n_qblocks + pid_m) * n_keep
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    last_start = tl.load(kept + n_keep - 1) * BLOCK_N
    last_is_ragged = last_start + BLOCK_N > L
    n_plain = n_keep - last_is_ragged.to(tl.int32)
    n_pairs = n_plain // 2
    if WS:
        k_desc = tl.make_tensor_descriptor(K + b.to(tl.int64) * stride_kb + h * stride_kh, shape=[L, D],
                                           strides=[stride_kl, 1], block_shape=[BLOCK_N, D])
        v_desc = tl.make_tensor_descriptor(V + b.to(tl.int64) * stride_vb + h * stride_vh, shape=[L, D],
                                           strides=[stride_vl, 1], block_shape=[BLOCK_N, D])
        for j in tl.range(0, n_pairs, warp_specialize=True):
            s_a = tl.load(kept + 2 * j) * BLOCK_N
            s_b = tl.load(kept + 2 * j + 1) * BLOCK_N
            k_a = k_desc.load([s_a, 0])
            k_b = k_desc.load([s_b, 0])
            qk_a = tl.dot(q, tl.trans(k_a))
            qk_b = tl.dot(q, tl.trans(k_b))
            v_a = v_desc.load([s_a, 0])
            v_b = v_desc.load([s_b, 0])
            acc, l_i, m_i = _softmax_pv_pair(acc, l_i, m_i, qk_a, qk_b, v_a, v_b, qk_scale, POLY >= 1)
    elif LOOKAHEAD:
        if n_pairs > 0:
            s_a = tl.load(kept) * BLOCK_N
            s_b = tl.load(kept + 1) * BLOCK_N
            qk_a = tl.dot(q, tl.trans(tl.load(k_tile + s_a.to(tl.int64) * stride_kl)))
            qk_b = tl.dot(q, tl.trans(tl.load(k_tile + s_b.to(tl.int64) * stride_kl)))
            for j in range(1, n_pairs):
                n_a = tl.load(kept + 2 * j) * BLOCK_N
                n_b = tl.load(kept + 2 * j + 1) * BLOCK_N
                nqk_a = tl.dot(q, tl.trans(tl.load(k_tile + n_a.to(tl.int64) * stride_kl)))
                nqk_b = tl.dot(q, tl.trans(tl.load(k_tile + n_b.to(tl.int64) * stride_kl)))
                v_a = tl.load(v_tile + s_a.to(tl.int64) * stride_vl)
                v_b = tl.load(v_tile + s_b.to(tl.int64) * stride_vl)
                acc, l_i, m_i = _softmax_pv_pair(acc, l_i, m_i, qk_a, qk_b, v_a, v_b, qk_scale, POLY == 1)
                qk_a = nqk_a
                qk_b = nqk_b
                s_a = n_a
                s_b = n_b
            v_a = tl.load(v_tile + s_a.to(tl.int64) * stride_vl)
            v_b = tl.load(v_tile + s_b.to(tl.int64) * stride_vl)
            acc, l_i, m_i = _softmax_pv_pair(acc, l_i, m_i, qk_a, qk_b, v_a, v_b, qk_scale, False)
    else:
        for j in range(n_pairs):
            s_a = tl.load(kept + 2 * j) * BLOCK_N
            s_b = tl.load(kept + 2 * j + 1) * BLOCK_N
            k_a = tl.load(k_tile + s_a.to(tl.int64) * stride_kl)
            k_b = tl.load(k_tile + s_b.to(tl.int64) * stride_kl)
            qk_a = tl.dot(q, tl.trans(k_a))
            qk_b = tl.dot(q, tl.trans(k_b))
            v_a = tl.load(v_tile + s_a.to(tl.int64) * stride_vl)
            v_b = tl.load(v_tile + s_b.to(tl.int64) * stride_vl)
            acc, l_i, m_i = _softmax_pv_pair(acc, l_i, m_i, qk_a, qk_b, v_a, v_b, qk_scale, POLY == 1)
    for j in range(2 * n_pairs, n_plain):
        start_n = tl.load(kept + j) * BLOCK_N
        acc, l_i, m_i = sla._attend_one_block(acc, l_i, m_i, q, K, V, k_tile, v_tile, start_n, 0, 0,
                                              offs_n, L, qk_scale, stride_kl, stride_vl, KSUM,
                                              RAGGED=False, USE_TMA=False)
    if last_is_ragged:
        acc, l_i, m_i = sla._attend_one_block(acc, l_i, m_i, q, K, V, k_tile, v_tile, last_start, 0, 0,
                                              offs_n, L, qk_scale, stride_kl, stride_vl, KSUM,
                                              RAGGED=True, USE_TMA=False)
    acc = acc / l_i[:, None]
    qf = q.to(tl.float32)
    e = tl.math.exp2((qf - tl.max(qf, axis=1)[:, None]) * 1.4426950408889634)
    w = e * tl.load(KSUM + pid_bh.to(tl.int64) * stride_ksum + offs_d)[None, :]
    denom = tl.sum(w, axis=1) + eps_over_len * tl.sum(e, axis=1)
    kvw = tl.load(KVW + pid_bh.to(tl.int64) * D * D + offs_d[:, None] * D + offs_d[None, :])
    acc = tl.dot((w / denom[:, None]).to(kvw.dtype), kvw, acc)
    acc += tl.load(BIAS + offs_d).to(tl.float32)[None, :]
    o_ptrs = O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_real)


_ALLOCATOR_SET = False


def attention_variant(q, k, v, kept, kvw, k_sum_mean, bias, *, lookahead=False, poly=0, ws=False,
                      num_warps=8, num_stages=2, maxnreg=None):
    global _ALLOCATOR_SET
    if ws and not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _ALLOCATOR_SET = True
    B, L, H, D = q.shape
    out = torch.empty_like(q)
    extra = {} if maxnreg is None else {"maxnreg": maxnreg}
    _attn_variant_kernel[(-(-L // 128), B * H)](
        q, k, v, out, kept, kvw, k_sum_mean, bias,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        k_sum_mean.stride(1), L, H, kept.shape[-1], sla.LOG2E / math.sqrt(D), sla.LINEAR_EPS / L,
        D=D, BLOCK_M=128, BLOCK_N=64, LOOKAHEAD=lookahead, POLY=poly, WS=ws,
        num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=True, **extra,
    )
    return out
