"""SLA sparse-linear attention (TurboDiffusion's video self-attention), as a PyTorch reference and a Triton path.

All tensors are (B, L, H, D) after RoPE. Semantics (REFERENCE.md section 6):

* Router. Mean-pool q over blocks of `block_q` tokens and the smoothed key k - mean_L(k) over blocks of `block_k`
  tokens (a ragged last block is pooled over its real tokens); score = pooled_q @ pooled_k^T; every q-block keeps
  its top max(1, int(topk * n_kblocks)) k-blocks, sorted ascending (the order fixes the accumulation order).
  Ties: a higher score wins; among equal scores the lower k-block index wins (stable descending sort).
  Subtracting the key mean shifts every score of a q-block by the same amount, so it never changes which blocks
  are kept; it is kept for fidelity with the published checkpoints' numerics.
* Sparse branch: exact softmax attention (scale 1/sqrt(D)) of each q-block over its kept k-blocks only.
* Linear branch over ALL keys: phi = softmax over the head dim, the same map for q and k;
  o_l = proj_l(phi(q) (phi(k)^T v) / (phi(q) . sum_L phi(k) + 1e-5)), proj_l = Linear(D, D) shared by the heads.
* o = o_sparse + o_l, returned in q's dtype.

Public API: `sla_router`, `sla_reference` (plain PyTorch, any device) and `sla_triton` (the GPU path); the
pieces of the Triton path (`sla_prologue`, `sla_triton_plan`, `sla_sparse_attention`) are public for the benchmark.
An int8-QK^T path of the fused kernel (`sla_sparse_attention(qk_int8=...)`, SageAttention's quantization, checked
against `sla_int8_reference`) is kept as a measured experiment: on Hopper it is barely faster and ~7x less exact.
All are inference-only (no autograd) and deterministic: same inputs on the same GPU and software, same bits (fixed
launch configs, no atomics, reductions in a fixed order, stable sorts).
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F

try:  # the reference runs without Triton (e.g. on machines where it is not installed)
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on Triton-less installs
    triton = None
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - Triton older than 3.4: pointer loads only
    TensorDescriptor = None

from kernels import sla_gluon

LINEAR_EPS = 1e-5
LOG2E = 1.4426950408889634
SUPPORTED_HEAD_DIMS = (16, 32, 64, 128)

# The Triton path computes the linear-branch statistics in chunks of TILE-token tiles, one program per
# (chunk, b, h), then sums the chunk partials in a fixed order (`_sla_finalize_kernel`). The chunking depends only
# on the shape of one batch item (never on the device or the batch size), so the bits are the same on every GPU
# and in every batch. One wave of one 16-warp program per H200 SM: the [D, D] phi(k)^T v accumulator spread over
# 512 threads fits 128 registers, and 3 stages of q/k/v tiles keep enough loads in flight.
# Measured on an H200 (bench/experiments/stats_launch_sweep.py, statistics + finalize, ms at 1.3B / 14B 720p):
# 16 warps x 132 programs x 3 stages 0.155 / 1.098; 4 stages 0.155 / 1.105; 264 programs 0.170 / 1.141; 66
# programs 0.320; 8 warps x 264 x 2 stages (the session-3 default: 241 registers, one program per SM) 0.209 / 1.430;
# 8 warps, tile 32, 4 stages 0.164-0.180; tile 128 at 3 stages does not fit shared memory.
# Session 6: 16 warps x 132 at 2 stages 0.195 (2 spills); tile 128 at 2 stages 0.195 (40 spills), at 1 stage 0.221;
# 8 warps, tile 128, 2 stages 0.198 (16 spills): the default stays.
# Session 7 (ablations, H200, stats alone 0.141 ms at 1.3B; a read-only pass at this launch 0.081): without the
# pooling MMAs 0.099, without phi's softmax 0.109, without the phi(k)^T v MMA 0.123. Landed: that MMA as v^T phi
# (phi a B operand, as in the phi-sum MMA): 0.154 -> 0.145 ms with finalize at 1.3B, 1.091 -> 1.014 at 14B, same
# bits. Dropped: token sums as cross-warp reductions instead of selector MMAs 0.41 ms; phi / k sums accumulated
# elementwise (no selector MMA) 0.148-0.169 (spills at 16 warps' 128 registers); the pooling MMAs as trans(x) @
# sel^T (M = D) 0.1447 vs 0.1462 / 1.007 vs 1.021, same bits, 164 KB shared: too small to take.
STATS_LAUNCH = dict(target_programs=132, num_warps=16, num_stages=3, tile=64)
# Kernel variants, fixed per dtype/device (bench/bench_attention.py times all of them):
# TMA loads of K/V tiles (host tensor descriptors) measured slower than pointer loads on an H200 at both Wan
# shapes (1.62 vs 1.57 ms at 1.3B, 27.1 vs 26.1 ms at 14B), so pointer loads are the default everywhere.
USE_TMA_ON_HOPPER = False
# Hopper and newer, 16-bit inputs: kept k-blocks per online-softmax update (2 halves the rescaling work) and the
# launch. Sweep on an H200 at the 1.3B shape (bench/bench_kernels_quick.py, fused kernel alone): two blocks as two
# 64-key tiles, 8 warps: 1.528-1.560 ms at 2, 3 or 4 stages; the same two blocks gathered into one 128-key tile
# (`gather`) 1.644 ms at 2 stages, 1.586 ms at 3; 4 warps 3.9-4.1 ms; one block per step 1.82-1.84 ms; four
# blocks per step do not fit shared memory at 2 stages (288 KB) and take 2.32 ms unpipelined.
HOPPER_ATTENTION = dict(blocks_per_step=2, gather=False, num_warps=8, num_stages=2)
# Also tried on an H200 (session 5, bench/experiments/ab_attention.py, medians of interleaved rounds, kernel ms at
# 1.3B / 14B 720p; this kernel 1.58-1.62 / 26.1-26.4) and dropped: persistent programs, one per SM looping over
# q-blocks (1.637; with Triton's loop-nest flattening 1.627: both spill at 255 registers); loops whose bounds depend
# on n_keep only, with a masked tail, as flattening needs (1.622 / 27.35); an odd block run alone before the pairs
# (1.803 / 29.30); phi(q) from the q tile already in registers instead of a reload (1.554 / 26.68, full op 1.748 vs
# 1.738: no change); reciprocal-multiplies for the epilogue's divisions (the compiler already emits them: same
# bits). The kernel's time against kept blocks fits 0.21 ms fixed + 27.4 us per kept block of every q-block at
# 1.3B (top-k 0.05 / 0.1 / 0.2: 0.895 / 1.603 / 3.001 ms): load, pipeline fill and epilogue are ~13% at top-k 0.1.
# Session 6 (H200, bench/experiments/attention_launch_sweep.py, medians of 5 interleaved rounds, kernel ms at 1.3B):
# this launch 1.546; 64-row programs of one warpgroup (`rows_per_program=64`, two share a 128-token q-block's kept
# list; 252 registers and 80 KB, so two fit an SM and could hide each other's start-up and epilogue) 1.771 at 2
# stages, 1.748 at 3; 64 rows with pairs 2.244 (144 KB: one per SM); 128 rows, one block per step 1.840. Dropped:
# one warpgroup per program halves the K/V reuse and the pairing is what pays. Packed bf16x2 exponentials
# (ex2.approx.ftz.bf16x2) compile to two MUFU.EX2.BF16 per pair on sm_90 (no throughput gain, checked in SASS).
# Session 7: QK^T in int8 (`qk_int8=`, bench/experiments/int8_qk_attention.py) 1.548 vs 1.560 ms at 1.3B, 24.97
# vs 26.35 at 14B, at 1.3e-2 relative error instead of 1.9e-3; programmatic dependent launch of the plan's
# kernels (griddepcontrol.wait after the q load) 1.748 vs 1.576 ms: both dropped as defaults. Softmax row sums on
# the tensor cores (l = P @ ones[BLOCK_N, 16], FA-style; the pair loop loses its 72 FADDs and half its
# shuffles, 534 instead of 593 instructions, 248 registers) 1.764 ms: the extra MMAs' waits cost more.
# The wave tail (`_tail_split`): programs per wave it plans for (132: one fused-kernel program per SM of an H100 /
# H200 SXM; a constant, so the split and the bits never depend on the device), at most max_pieces per split unit,
# at least min_blocks kept blocks per piece, merge_rows rows per merge program.
# Session 8 (H200, bench/experiments/wave_tail_ab.py; --probe: 52 kept blocks, 12 heads): the kernel takes 1.543 ms
# for 3036 programs (23 waves) and 1.615 for 3048 (23.09): a partial wave costs a whole one. With the split at 1.3B
# (36 tail units -> 108 pieces of <= 18 blocks): whole units 1.470 ms + pieces 0.030 + merge 0.007 (profiler);
# interleaved full op 1.698 vs 1.716 ms unsplit (7 rounds, 6 of them faster). At 14B (12 tail units in 179 waves)
# it measured within noise either way. Session 13 (H100, wave_tail_ab.py): the Gluon kernel with its intra-warpgroup
# overlap gains nothing from it, full op 1.410 vs 1.408 ms whole at 1.3B and 22.38 vs 21.92 ms at 14B 720p (forward
# 152.7 vs 151.9 ms, 151.0 vs 149.1 through graphs), so by default only the Triton kernel splits its tail.
TAIL_SPLIT = dict(wave_slots=132, max_pieces=8, min_blocks=4, merge_rows=32)
PAIR_KV_BLOCKS = HOPPER_ATTENTION["blocks_per_step"] > 1
# The fused kernel on sm_90 when the inputs allow it (`sla_gluon.gluon_layout_ok`): the warp-specialized Gluon
# kernel (TMA producer + two consumer warpgroups, `kernels/sla_gluon.py`) instead of the Triton one above.
GLUON_ON_HOPPER = True
# Set when an auto-picked Hopper variant failed to compile with the installed Triton (warned once).
_PLAIN_VARIANT_ONLY = False
_TRITON_KERNEL_ONLY = False


# ----------------------------------------------------------------------------------------------------------------
# Router (shared by the reference and the Triton path)
# ----------------------------------------------------------------------------------------------------------------


def n_kept_blocks(topk: float, n_kblocks: int) -> int:
    """How many k-blocks each q-block keeps: max(1, int(topk * n_kblocks)), never more than there are."""
    if not 0.0 < topk <= 1.0:
        raise ValueError(f"topk must be in (0, 1], got {topk}")
    return min(n_kblocks, max(1, int(topk * n_kblocks)))


def _block_means(x: torch.Tensor, block: int) -> torch.Tensor:
    """Float32 means of x (B, L, H, D) over consecutive blocks of `block` tokens, the last one over its real
    tokens -> (B, H, n_blocks, D)."""
    B, L, H, D = x.shape
    n_blocks, n_full = -(-L // block), L // block
    means = torch.empty(B, n_blocks, H, D, dtype=torch.float32, device=x.device)
    if n_full:
        means[:, :n_full] = x[:, : n_full * block].unflatten(1, (n_full, block)).sum(2, dtype=torch.float32) / block
    if n_full < n_blocks:
        means[:, n_full] = x[:, n_full * block :].sum(1, dtype=torch.float32) / (L - n_full * block)
    return means.transpose(1, 2)


def _rank_blocks(pooled_q: torch.Tensor, pooled_k: torch.Tensor, k_mean: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Scores pooled_q . (pooled_k - k_mean) and keeps the n_keep best k-blocks per q-block, sorted, int32.

    pooled_q (B, H, nq, D), pooled_k (B, H, nk, D), k_mean (B, H, D). Ties go to the lower k-block index
    (stable sort), so the choice is deterministic on every device.
    """
    scores = pooled_q @ (pooled_k - k_mean[:, :, None, :]).transpose(-1, -2)
    ranked = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :n_keep]
    return ranked.sort(dim=-1).values.to(torch.int32).contiguous()


def _check_inputs(q, k, v, block_q: int, block_k: int):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"q, k, v must share one (B, L, H, D) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if block_q <= 0 or block_k <= 0:
        raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")


@torch.no_grad()
def sla_router(q: torch.Tensor, k: torch.Tensor, topk: float, block_q: int = 128, block_k: int = 64) -> torch.Tensor:
    """Kept k-blocks per q-block: int32 [B, H, n_qblocks, n_keep], each row sorted ascending and unique."""
    _check_inputs(q, k, k, block_q, block_k)
    B, L, H, D = k.shape
    n_keep = n_kept_blocks(topk, -(-L // block_k))
    k_mean = k.sum(1, dtype=torch.float32) / L
    return _rank_blocks(_block_means(q, block_q), _block_means(k, block_k), k_mean, n_keep)


# ----------------------------------------------------------------------------------------------------------------
# INT8 QK^T quantization (SageAttention's scheme; an experiment of the fused kernel, not a backend)
# ----------------------------------------------------------------------------------------------------------------

# Symmetric int8: x8 = round_half_even(x * 127 / amax), x ~= x8 * amax / 127; amax is floored so that an all-zero
# row or block gets a tiny positive scale (its int8 values are 0 and its logits finite).
INT8_AMAX_FLOOR = 1e-12


def quantize_qk_int8_reference(q: torch.Tensor, k: torch.Tensor, block_k: int = 64):
    """q per token and the smoothed key k - mean_L(k) per block_k-token block, as symmetric int8.

    Returns (q8 (B, L, H, D) int8, q_scale (B, H, L) f32, k8 (B, L, H, D) int8, k_scale (B, H, n_kblocks) f32).
    Smoothing moves every logit of a query by the same amount, so the softmax is unchanged, while the int8 range
    covers what varies between keys instead of their shared offset (SageAttention's finding: keys carry a large
    channel-wise bias). Per-token q scales cost nothing in the kernel (they fold into the per-row softmax scale).
    """
    B, L, H, D = q.shape
    nk = -(-L // block_k)
    qf = q.float()
    q_amax = qf.abs().amax(-1).clamp_min(INT8_AMAX_FLOOR)  # (B, L, H)
    q8 = torch.round(qf * (127.0 / q_amax)[..., None]).to(torch.int8)
    ks = k.float() - k.sum(1, dtype=torch.float32)[:, None] / L
    blocks = F.pad(ks, (0, 0, 0, 0, 0, nk * block_k - L)).view(B, nk, block_k, H, D)
    k_amax = blocks.abs().amax(dim=(2, 4)).clamp_min(INT8_AMAX_FLOOR)  # (B, nk, H)
    k8 = torch.round(blocks * (127.0 / k_amax)[:, :, None, :, None]).to(torch.int8).view(B, nk * block_k, H, D)[:, :L]
    return (q8, (q_amax / 127.0).transpose(1, 2).contiguous(), k8.contiguous(),
            (k_amax / 127.0).transpose(1, 2).contiguous())


def dequantize_qk_int8(q8, q_scale, k8, k_scale, block_k: int = 64):
    """float32 (q, smoothed k) as the int8 kernel sees them: x8 * scale."""
    L = q8.shape[1]
    q = q8.float() * q_scale.transpose(1, 2)[..., None]
    k_scale_per_token = k_scale.repeat_interleave(block_k, dim=2)[:, :, :L].transpose(1, 2)
    return q, k8.float() * k_scale_per_token[..., None]


# ----------------------------------------------------------------------------------------------------------------
# Reference (plain PyTorch, float32)
# ----------------------------------------------------------------------------------------------------------------

# Scores materialised at once by the reference (elements): bounds its memory at any shape (~256 MB in fp32).
_REFERENCE_SCORE_BUDGET = 1 << 26


def _sparse_branch_one_head(q, k, v, kept, block_q: int, block_k: int) -> torch.Tensor:
    """Exact softmax attention of each q-block over its kept k-blocks; q, k, v float32 (L, D), kept (nq, n_keep)."""
    L, D = q.shape
    nq, n_keep = kept.shape
    nk = -(-L // block_k)
    q_blocks = F.pad(q, (0, 0, 0, nq * block_q - L)).view(nq, block_q, D)
    k_blocks = F.pad(k, (0, 0, 0, nk * block_k - L)).view(nk, block_k, D)
    v_blocks = F.pad(v, (0, 0, 0, nk * block_k - L)).view(nk, block_k, D)
    key_is_real = (torch.arange(nk * block_k, device=q.device) < L).view(nk, block_k)
    out = torch.empty(nq, block_q, D, dtype=torch.float32, device=q.device)
    step = max(1, _REFERENCE_SCORE_BUDGET // (block_q * n_keep * block_k))
    for start in range(0, nq, step):
        idx = kept[start : start + step]
        keys = k_blocks[idx].flatten(1, 2)
        values = v_blocks[idx].flatten(1, 2)
        scores = (q_blocks[start : start + step] @ keys.transpose(1, 2)) * (1.0 / math.sqrt(D))
        scores.masked_fill_(~key_is_real[idx].flatten(1, 2)[:, None, :], float("-inf"))
        out[start : start + step] = torch.softmax(scores, dim=-1) @ values
    return out.flatten(0, 1)[:L]


def _linear_branch_one_head(q, k, v, proj_weight, proj_bias) -> torch.Tensor:
    """proj_l(phi(q) (phi(k)^T v) / (phi(q) . sum phi(k) + eps)) over all keys; float32 (L, D) in and out."""
    phi_q, phi_k = torch.softmax(q, dim=-1), torch.softmax(k, dim=-1)
    kv = phi_k.transpose(0, 1) @ v
    k_sum = phi_k.sum(0)
    o = (phi_q @ kv) / ((phi_q @ k_sum) + LINEAR_EPS)[:, None]
    return o @ proj_weight.transpose(0, 1) + proj_bias


@torch.no_grad()
def sla_reference(q, k, v, proj_weight, proj_bias, topk: float, block_q: int = 128, block_k: int = 64):
    """SLA in plain PyTorch, float32 inside, one head at a time (memory stays small at the 14B 720p shape).

    The sparse branch gathers each q-block's kept k-blocks in chunks of at most ~2^26 scores; matmuls follow
    torch's float32 settings (full float32 unless TF32 was enabled globally).
    """
    return _reference(q, k, v, proj_weight, proj_bias, topk, block_q, block_k)


@torch.no_grad()
def sla_int8_reference(q, k, v, proj_weight, proj_bias, topk: float, block_q: int = 128, block_k: int = 64):
    """`sla_reference` with the sparse branch's logits from int8 q and smoothed k, quantized as the int8
    kernel path (`qk_int8=`) is fed them (`quantize_qk_int8_reference`); routing, P @ V and the linear branch are unchanged."""
    _check_inputs(q, k, v, block_q, block_k)
    scores_qk = dequantize_qk_int8(*quantize_qk_int8_reference(q, k, block_k), block_k)
    return _reference(q, k, v, proj_weight, proj_bias, topk, block_q, block_k, scores_qk)


def _reference(q, k, v, proj_weight, proj_bias, topk, block_q, block_k, scores_qk=None):
    """The reference loop over (b, h); scores_qk: the (q, k) the sparse branch's logits use (default q, k)."""
    _check_inputs(q, k, v, block_q, block_k)
    B, L, H, D = q.shape
    kept = sla_router(q, k, topk, block_q, block_k).long()
    weight, bias = (p.detach().to(device=q.device, dtype=torch.float32) for p in (proj_weight, proj_bias))
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    for b in range(B):
        for h in range(H):
            qh, kh, vh = (x[b, :, h].float() for x in (q, k, v))
            sq, sk = (qh, kh) if scores_qk is None else (x[b, :, h] for x in scores_qk)
            o = _sparse_branch_one_head(sq, sk, vh, kept[b, h], block_q, block_k)
            o += _linear_branch_one_head(qh, kh, vh, weight, bias)
            out[b, :, h] = o.to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Triton path
# ----------------------------------------------------------------------------------------------------------------

if triton is not None:
    # float32 inputs multiply on tensor cores in TF32 (Triton's exact-FMA dot spills heavily at these tiles);
    # bf16/fp16 inputs ignore it. Pinned here so an environment default can never change the bits.
    FP32_DOT_PRECISION = tl.constexpr("tf32")
    _SIGN_BIT_U32 = tl.constexpr(0x80000000)
    _ALL_BITS_U32 = tl.constexpr(0xFFFFFFFF)
    _MAGIC_I32 = tl.constexpr(0x4B400000)  # the float 1.5 * 2^23 = 12582912.0 as int32 bits (`_int8_logits`)
    _MAGIC_F32 = tl.constexpr(12582912.0)

    @triton.jit
    def _sla_stats_kernel(
        Q, K, V, Q_POOL, K_POOL, STATS,
        stride_qb, stride_ql, stride_qh,
        stride_kb, stride_kl, stride_kh,
        stride_vb, stride_vl, stride_vh,
        L, H, n_qblocks, n_kblocks, tiles_per_chunk, inv_len,
        D: tl.constexpr, BLOCK_N: tl.constexpr, RATIO: tl.constexpr, TILE: tl.constexpr,
        POOL_PRECISION: tl.constexpr,
    ):
        """One pass over q, k, v for a chunk of TILE-token tiles of one (b, h): everything but the attention.

        Writes the router's mean-pooled q (per RATIO * BLOCK_N tokens) and k (per BLOCK_N tokens), each mean over
        the block's real tokens, and this chunk's partial [phi(k)^T v | sum phi(k) | sum k] / L in float32.
        Chunks start on q-block boundaries, so every q-block is pooled inside one program.

        Every token sum is an MMA with a 0/1 selector matrix (row r of SEL_K picks the tokens of the tile's r-th
        k-block): the tensor cores reduce over tokens, so the loop has no cross-warp reductions, and the [16, D]
        results are stored row-wise as they come out. Only the softmax of phi (over D, within a row) reduces.
        """
        BLOCK_Q: tl.constexpr = RATIO * BLOCK_N
        QB_PER_TILE: tl.constexpr = TILE // BLOCK_Q if TILE >= BLOCK_Q else 1
        TILES_PER_QB: tl.constexpr = BLOCK_Q // TILE if BLOCK_Q > TILE else 1
        KB_PER_TILE: tl.constexpr = TILE // BLOCK_N
        SEL: tl.constexpr = 16  # MMA-friendly row count; rows past KB_PER_TILE / QB_PER_TILE select nothing
        chunk = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        n_chunks = tl.num_programs(0)
        offs_t = tl.arange(0, TILE)
        offs_d = tl.arange(0, D)
        offs_s = tl.arange(0, SEL)
        q_tile = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_t[:, None] * stride_ql + offs_d[None, :]
        k_tile = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_t[:, None] * stride_kl + offs_d[None, :]
        v_tile = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_t[:, None] * stride_vl + offs_d[None, :]
        q_pool = Q_POOL + pid_bh.to(tl.int64) * n_qblocks * D + offs_d[None, :]
        k_pool = K_POOL + pid_bh.to(tl.int64) * n_kblocks * D + offs_d[None, :]
        dtype = K.dtype.element_ty
        sel_k = (offs_s[:, None] == offs_t[None, :] // BLOCK_N).to(dtype)
        sel_q = (offs_s[:, None] == offs_t[None, :] // (TILE // QB_PER_TILE)).to(dtype)

        kv = tl.zeros([D, D], dtype=tl.float32)
        phi_k_sums = tl.zeros([SEL, D], dtype=tl.float32)
        k_sums = tl.zeros([SEL, D], dtype=tl.float32)
        q_run = tl.zeros([SEL, D], dtype=tl.float32)
        for i in range(0, tiles_per_chunk):
            tile = chunk * tiles_per_chunk + i
            start = tile * TILE
            real = (start + offs_t) < L
            q = tl.load(q_tile + start.to(tl.int64) * stride_ql, mask=real[:, None], other=0.0)
            k = tl.load(k_tile + start.to(tl.int64) * stride_kl, mask=real[:, None], other=0.0)
            v = tl.load(v_tile + start.to(tl.int64) * stride_vl, mask=real[:, None], other=0.0)
            # pooled k: row r = sum of the tile's r-th k-block
            k_block_sums = tl.dot(sel_k, k, input_precision=POOL_PRECISION)
            k_sums += k_block_sums
            kblk = tile * KB_PER_TILE + offs_s
            n_real_k = tl.maximum(tl.minimum(L - kblk * BLOCK_N, BLOCK_N), 1).to(tl.float32)
            tl.store(k_pool + kblk[:, None] * D, k_block_sums / n_real_k[:, None],
                     mask=((offs_s < KB_PER_TILE) & (kblk < n_kblocks))[:, None])
            # pooled q: a running sum, stored (and reset) on the tile that ends a q-block
            q_run = tl.dot(sel_q, q, q_run, input_precision=POOL_PRECISION)
            ends_q_block = (i % TILES_PER_QB) == TILES_PER_QB - 1
            qblk = (tile // TILES_PER_QB) * QB_PER_TILE + offs_s
            n_real_q = tl.maximum(tl.minimum(L - qblk * BLOCK_Q, BLOCK_Q), 1).to(tl.float32)
            tl.store(q_pool + qblk[:, None] * D, q_run / n_real_q[:, None],
                     mask=((offs_s < QB_PER_TILE) & (qblk < n_qblocks) & ends_q_block)[:, None])
            q_run = tl.where(ends_q_block, 0.0, q_run)
            # linear branch: phi(k) = softmax over the head dim, zero on padding rows
            kf = k.to(tl.float32)
            e = tl.math.exp2((kf - tl.max(kf, axis=1)[:, None]) * 1.4426950408889634)
            phi = tl.where(real[:, None], e * (1.0 / tl.sum(e, axis=1))[:, None], 0.0).to(v.dtype)
            # (phi(k)^T v)^T = v^T phi: phi is then a B operand, as in the phi-sum MMA below, not a transposed A
            kv = tl.dot(tl.trans(v), phi, kv, input_precision=FP32_DOT_PRECISION)
            phi_k_sums = tl.dot(sel_k, phi, phi_k_sums, input_precision=FP32_DOT_PRECISION)
        stats = STATS + (pid_bh.to(tl.int64) * n_chunks + chunk) * (D * D + 2 * D)
        tl.store(stats + offs_d[None, :] * D + offs_d[:, None], kv * inv_len)  # kv holds the transpose
        tl.store(stats + D * D + offs_d, tl.sum(phi_k_sums, axis=0) * inv_len)
        tl.store(stats + D * D + D + offs_d, tl.sum(k_sums, axis=0) * inv_len)

    @triton.jit
    def _sla_finalize_kernel(
        STATS, W, K_POOL, KVW, KSUM, n_chunks, n_kblocks,
        D: tl.constexpr, ROWS: tl.constexpr, POOL_TILE: tl.constexpr,
    ):
        """Second stage of the statistics, one program per (b, h, ROWS of the head dim), no atomics:

        * sums the chunk partials in chunk order (fixed, so the bits never depend on scheduling);
        * KSUM = sum phi(k) / L and KVW = diag(1 / KSUM) (phi(k)^T v / L) @ W^T, cast to KVW's dtype (the
          linear branch's factors for the fused kernel's epilogue);
        * smooths the pooled keys in place, k_pool -= mean_L(k), for the router's scores.
        """
        pid_bh = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
        offs_d = tl.arange(0, D)
        kv = tl.zeros([ROWS, D], dtype=tl.float32)
        phi_sum = tl.zeros([ROWS], dtype=tl.float32)
        k_mean = tl.zeros([ROWS], dtype=tl.float32)
        for c in range(0, n_chunks):
            part = STATS + (pid_bh * n_chunks + c) * (D * D + 2 * D)
            kv += tl.load(part + rows[:, None] * D + offs_d[None, :])
            phi_sum += tl.load(part + D * D + rows)
            k_mean += tl.load(part + D * D + D + rows)
        tl.store(KSUM + pid_bh * D + rows, phi_sum)
        kv_rows = kv / tl.maximum(phi_sum, 1e-30)[:, None]  # phi(k)-weighted means of v
        w_t = tl.load(W + offs_d[None, :] * D + offs_d[:, None]).to(tl.float32)  # W^T[i, j] = W[j, i]
        kvw = tl.dot(kv_rows, w_t, input_precision=FP32_DOT_PRECISION)
        tl.store(KVW + pid_bh * D * D + rows[:, None] * D + offs_d[None, :], kvw.to(KVW.dtype.element_ty))
        offs_n = tl.arange(0, POOL_TILE)
        pool = K_POOL + pid_bh * n_kblocks * D + rows[None, :]
        for n0 in range(0, n_kblocks, POOL_TILE):
            m = ((n0 + offs_n) < n_kblocks)[:, None]
            p = pool + (n0 + offs_n)[:, None] * D
            tl.store(p, tl.load(p, mask=m, other=0.0) - k_mean[None, :], mask=m)

    @triton.jit
    def _top_blocks(s, real, n_keep):
        """(keep, slot) for a [ROWS, NK] float32 score tile: the n_keep best real columns of every row, and each
        kept column's position in its row's ascending output; no sort.

        The n_keep-th largest score is found by a 32-step bisection on an order-preserving uint32 key of the
        float; columns above it are kept, and of the columns equal to it the lowest indices fill the remaining
        slots, which is exactly a stable descending sort cut at n_keep (ties toward the lower index). A kept
        column's slot is the count of kept columns before it (a prefix sum), so rows come out sorted.
        """
        s = tl.where(s == 0.0, 0.0, s)  # -0.0 ties with +0.0, as in torch.sort
        bits = s.to(tl.uint32, bitcast=True)
        key = tl.where((bits & _SIGN_BIT_U32) != 0, bits ^ _ALL_BITS_U32, bits | _SIGN_BIT_U32)
        key = tl.where(real, key, 0)
        threshold = tl.zeros([s.shape[0]], dtype=tl.uint32)
        for i in tl.static_range(32):
            cand = threshold | (_SIGN_BIT_U32 >> i)
            n_at_least = tl.sum((key >= cand[:, None]).to(tl.int32), axis=1)
            threshold = tl.where(n_at_least >= n_keep, cand, threshold)
        above = real & (key > threshold[:, None])
        tied = real & (key == threshold[:, None])
        room = n_keep - tl.sum(above.to(tl.int32), axis=1)
        keep = above | (tied & (tl.cumsum(tied.to(tl.int32), axis=1) <= room[:, None]))
        slot = tl.cumsum(keep.to(tl.int32), axis=1) - 1
        return keep, slot

    @triton.jit
    def _sla_select_kernel(
        SCORES, KEPT, n_rows, n_kblocks, n_keep,
        ROWS: tl.constexpr, NK: tl.constexpr,
    ):
        """Top-n_keep k-blocks of ROWS score rows, written in ascending block order (int32), see `_top_blocks`."""
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, NK)
        real = (rows < n_rows)[:, None] & (cols < n_kblocks)[None, :]
        s = tl.load(SCORES + rows[:, None] * n_kblocks + cols[None, :], mask=real, other=0.0)
        keep, slot = _top_blocks(s, real, n_keep)
        tl.store(KEPT + rows[:, None] * n_keep + slot, tl.broadcast_to(cols[None, :], (ROWS, NK)), mask=keep)

    @triton.jit
    def _load_kv_tile(X, tile, row0, col0, start_n, stride_l, offs_n, L,
                      RAGGED: tl.constexpr, USE_TMA: tl.constexpr):
        """The BLOCK_N x D tile of K or V at token start_n; rows past L read as zeros."""
        if USE_TMA:  # out-of-bounds rows come back zero-filled; rows of the next batch item are masked by -inf
            x = X.load([row0 + start_n, col0])
        elif RAGGED:
            x = tl.load(tile + start_n.to(tl.int64) * stride_l, mask=((start_n + offs_n) < L)[:, None], other=0.0)
        else:
            x = tl.load(tile + start_n.to(tl.int64) * stride_l)
        return x

    @triton.jit
    def _int8_logits(q, k, row_scale, k_scales, start_n, BLOCK_N: tl.constexpr):
        """int8 QK^T of one k-block as (x, c, off): base-2 logits = x * c - off, c and off per row.

        The int32 MMA accumulates onto 0x4B400000, the bits of 1.5 * 2^23, so for |q . k| < 2^22 (always: at most
        D * 127^2 = 2,064,512 for D = 128) the sums read back as the floats 1.5 * 2^23 + q . k, exactly, with no
        int-to-float conversion instruction (a quarter-rate one on Hopper, as slow as the exponential). The magic
        offset folds into the per-row bias, so the softmax costs the bf16 path's FFMA per element.
        """
        acc = tl.full([q.shape[0], BLOCK_N], _MAGIC_I32, dtype=tl.int32)
        x = tl.dot(q, tl.trans(k), acc, out_dtype=tl.int32).to(tl.float32, bitcast=True)
        c = row_scale * tl.load(k_scales + start_n // BLOCK_N)
        return x, c, c * _MAGIC_F32

    @triton.jit
    def _attend_one_block(
        acc, l_i, m_i, q, K, V, k_tile, v_tile, start_n, kv_row0, kv_col0, offs_n, L, qk_scale,
        stride_kl, stride_vl, k_scales,
        RAGGED: tl.constexpr, USE_TMA: tl.constexpr, QK_INT8: tl.constexpr = False,
    ):
        """One online-softmax step over the BLOCK_N keys at start_n (flash attention, base-2 exponent).

        RAGGED masks keys past L (only the last k-block of a sequence can hold them). QK_INT8: q, k are int8,
        qk_scale is the per-row [BLOCK_M] scale and k_scales points at the per-k-block scales (`_int8_logits`).
        """
        k = _load_kv_tile(K, k_tile, kv_row0, kv_col0, start_n, stride_kl, offs_n, L, RAGGED, USE_TMA)
        if QK_INT8:
            qk, c, off = _int8_logits(q, k, qk_scale, k_scales, start_n, BLOCK_N=offs_n.shape[0])
            if RAGGED:
                qk = tl.where(((start_n + offs_n) < L)[None, :], qk, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, axis=1) * c - off)
            p = tl.math.exp2(qk * c[:, None] - (off + m_ij)[:, None])
        else:
            qk = tl.dot(q, tl.trans(k), input_precision=FP32_DOT_PRECISION)
            if RAGGED:
                qk = tl.where(((start_n + offs_n) < L)[None, :], qk, float("-inf"))
            m_ij = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
            p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        v = _load_kv_tile(V, v_tile, kv_row0, kv_col0, start_n, stride_vl, offs_n, L, RAGGED, USE_TMA)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=FP32_DOT_PRECISION)
        return acc, l_i, m_ij

    @triton.jit
    def _attend_two_blocks(
        acc, l_i, m_i, q, K, V, k_tile, v_tile, start_a, start_b, kv_row0, kv_col0, offs_n, L, qk_scale,
        stride_kl, stride_vl, k_scales,
        USE_TMA: tl.constexpr, QK_INT8: tl.constexpr = False,
    ):
        """One online-softmax step over two full k-blocks: one running-max update and one rescale of the
        accumulator per 2 * BLOCK_N keys, which halves that non-MMA work."""
        k_a = _load_kv_tile(K, k_tile, kv_row0, kv_col0, start_a, stride_kl, offs_n, L, False, USE_TMA)
        k_b = _load_kv_tile(K, k_tile, kv_row0, kv_col0, start_b, stride_kl, offs_n, L, False, USE_TMA)
        if QK_INT8:
            qk_a, c_a, off_a = _int8_logits(q, k_a, qk_scale, k_scales, start_a, BLOCK_N=offs_n.shape[0])
            qk_b, c_b, off_b = _int8_logits(q, k_b, qk_scale, k_scales, start_b, BLOCK_N=offs_n.shape[0])
            m_ij = tl.maximum(m_i, tl.maximum(tl.max(qk_a, axis=1) * c_a - off_a, tl.max(qk_b, axis=1) * c_b - off_b))
            p_a = tl.math.exp2(qk_a * c_a[:, None] - (off_a + m_ij)[:, None])
            p_b = tl.math.exp2(qk_b * c_b[:, None] - (off_b + m_ij)[:, None])
        else:
            qk_a = tl.dot(q, tl.trans(k_a), input_precision=FP32_DOT_PRECISION)
            qk_b = tl.dot(q, tl.trans(k_b), input_precision=FP32_DOT_PRECISION)
            m_ij = tl.maximum(m_i, tl.maximum(tl.max(qk_a, axis=1), tl.max(qk_b, axis=1)) * qk_scale)
            p_a = tl.math.exp2(qk_a * qk_scale - m_ij[:, None])
            p_b = tl.math.exp2(qk_b * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + (tl.sum(p_a, axis=1) + tl.sum(p_b, axis=1))
        acc = acc * alpha[:, None]
        v_a = _load_kv_tile(V, v_tile, kv_row0, kv_col0, start_a, stride_vl, offs_n, L, False, USE_TMA)
        acc = tl.dot(p_a.to(v_a.dtype), v_a, acc, input_precision=FP32_DOT_PRECISION)
        v_b = _load_kv_tile(V, v_tile, kv_row0, kv_col0, start_b, stride_vl, offs_n, L, False, USE_TMA)
        acc = tl.dot(p_b.to(v_b.dtype), v_b, acc, input_precision=FP32_DOT_PRECISION)
        return acc, l_i, m_ij

    @triton.jit
    def _attend_two_blocks_as_one_tile(
        acc, l_i, m_i, q, k_rows, v_rows, start_a, start_b, offs_2n, qk_scale, stride_kl, stride_vl,
        BLOCK_N: tl.constexpr,
    ):
        """One online-softmax step over two full k-blocks gathered into one 2 * BLOCK_N-key tile (row pointers
        jump from block a to block b): one QK^T and one PV MMA of the fused-attention tutorial's 128-key shape
        instead of two half-size ones, and one row max / row sum."""
        rows = tl.where(offs_2n < BLOCK_N, start_a, start_b - BLOCK_N) + offs_2n
        k = tl.load(k_rows + rows[:, None] * stride_kl)
        qk = tl.dot(q, tl.trans(k), input_precision=FP32_DOT_PRECISION)
        m_ij = tl.maximum(m_i, tl.max(qk, axis=1) * qk_scale)
        p = tl.math.exp2(qk * qk_scale - m_ij[:, None])
        alpha = tl.math.exp2(m_i - m_ij)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None]
        v = tl.load(v_rows + rows[:, None] * stride_vl)
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=FP32_DOT_PRECISION)
        return acc, l_i, m_ij

    @triton.jit
    def _sla_attention_kernel(
        Q, K, V, O, KEPT, KVW, KSUM, BIAS, QF, QS, KS,
        stride_qb, stride_ql, stride_qh,
        stride_qfb, stride_qfl, stride_qfh,
        stride_kb, stride_kl, stride_kh,
        stride_vb, stride_vl, stride_vh,
        stride_ob, stride_ol, stride_oh,
        stride_ksum, L, H, n_keep, qk_scale, eps_over_len, programs_per_head, unit0, chunk, PART_O, PART_LSE,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        USE_TMA: tl.constexpr, GROUP: tl.constexpr, GATHER: tl.constexpr, WITH_LINEAR: tl.constexpr,
        Q_SPLIT: tl.constexpr = 1, QK_INT8: tl.constexpr = False, PIECES: tl.constexpr = 1,
    ):
        """One q-block of one (b, h): block-sparse flash attention over its kept k-blocks, then the linear branch.

        The kept list is sorted, so only its last entry can be the ragged final k-block: the main loop runs
        mask-free (GROUP 2: two k-blocks per softmax update; GATHER: both loaded as one 2 * BLOCK_N-key tile) and
        that block, if kept, is peeled off with masking.
        Linear epilogue, with s = sum_L phi(k) / L (KSUM) and KVW = diag(1/s) (phi(k)^T v / L) W^T (host, fp32):
        o_l = [(phi(q) * s) / (phi(q) . s + eps / L)] @ KVW + bias, added straight onto the sparse output. Both
        factors stay O(1) (weights in [0, 1]; KVW rows are phi(k)-weighted means of v, projected), so they lose
        nothing when cast to fp16/bf16 for the MMA.
        QK_INT8 (experimental): Q and K are int8 (q per token, smoothed k per k-block, scales in QS / KS) and QF is
        the 16-bit q for the linear branch; P and V stay 16-bit.
        Grid (units, B): a unit is one program's rows of one head, numbered head-major from unit0. PIECES > 1 (the
        wave tail, `_tail_split`): PIECES programs share a unit, each over `chunk` consecutive kept blocks, and
        store their normalized partial output and log2-sum-exp in float32 for `_sla_tail_combine_kernel`.
        """
        b = tl.program_id(1)
        unit = unit0 + tl.program_id(0) // PIECES
        h = unit // programs_per_head
        pid_m = unit % programs_per_head
        pid_bh = b * H + h
        n_qblocks = tl.cdiv(programs_per_head, Q_SPLIT)  # routing blocks; Q_SPLIT programs share one
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        row_real = (offs_m < L)[:, None]

        q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :]
        q = tl.load(q_ptrs, mask=row_real, other=0.0)
        if QK_INT8:  # per-row scales; padding rows get 1 so that masked keys stay -inf (never 0 * inf)
            qk_scale = tl.load(QS + pid_bh.to(tl.int64) * L + offs_m, mask=offs_m < L, other=1.0) * qk_scale
            qf_ptrs = QF + b.to(tl.int64) * stride_qfb + h * stride_qfh + offs_m[:, None] * stride_qfl + offs_d[None, :]
        else:
            qf_ptrs = q_ptrs
        k_scales = KS + pid_bh.to(tl.int64) * tl.cdiv(L, BLOCK_N)
        kv_row0 = b * L  # TMA descriptors view K and V as (B*L, H*D)
        kv_col0 = h * D
        if USE_TMA:
            k_tile = K
            v_tile = V
        else:
            k_tile = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[:, None] * stride_kl + offs_d[None, :]
            v_tile = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_n[:, None] * stride_vl + offs_d[None, :]
        kept = KEPT + (pid_bh.to(tl.int64) * n_qblocks + pid_m // Q_SPLIT) * n_keep

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        if PIECES == 1:
            kv_lo = 0
            kv_hi = n_keep
        else:  # chunk is even, so pairs never straddle two pieces
            kv_lo = (tl.program_id(0) % PIECES) * chunk
            kv_hi = tl.minimum(kv_lo + chunk, n_keep)
        last_start = tl.load(kept + n_keep - 1) * BLOCK_N
        last_is_ragged = (last_start + BLOCK_N > L) & (kv_hi == n_keep)
        n_plain = kv_hi - last_is_ragged.to(tl.int32)
        n_single_start = kv_lo
        if GROUP == 2:
            pairs_end = kv_lo + (n_plain - kv_lo) // 2 * 2
            if GATHER:  # pointer loads only
                offs_2n = tl.arange(0, 2 * BLOCK_N)
                k_rows = K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_d[None, :]
                v_rows = V + b.to(tl.int64) * stride_vb + h * stride_vh + offs_d[None, :]
                for j in range(kv_lo // 2, pairs_end // 2):
                    start_a = tl.load(kept + 2 * j) * BLOCK_N
                    start_b = tl.load(kept + 2 * j + 1) * BLOCK_N
                    acc, l_i, m_i = _attend_two_blocks_as_one_tile(acc, l_i, m_i, q, k_rows, v_rows, start_a,
                                                                   start_b, offs_2n, qk_scale, stride_kl,
                                                                   stride_vl, BLOCK_N=BLOCK_N)
            else:
                for j in range(kv_lo // 2, pairs_end // 2):
                    start_a = tl.load(kept + 2 * j) * BLOCK_N
                    start_b = tl.load(kept + 2 * j + 1) * BLOCK_N
                    acc, l_i, m_i = _attend_two_blocks(acc, l_i, m_i, q, K, V, k_tile, v_tile, start_a, start_b,
                                                       kv_row0, kv_col0, offs_n, L, qk_scale, stride_kl,
                                                       stride_vl, k_scales, USE_TMA=USE_TMA, QK_INT8=QK_INT8)
            n_single_start = pairs_end
        for j in range(n_single_start, n_plain):
            start_n = tl.load(kept + j) * BLOCK_N
            acc, l_i, m_i = _attend_one_block(acc, l_i, m_i, q, K, V, k_tile, v_tile, start_n, kv_row0, kv_col0,
                                              offs_n, L, qk_scale, stride_kl, stride_vl, k_scales,
                                              RAGGED=False, USE_TMA=USE_TMA, QK_INT8=QK_INT8)
        if last_is_ragged:
            acc, l_i, m_i = _attend_one_block(acc, l_i, m_i, q, K, V, k_tile, v_tile, last_start, kv_row0, kv_col0,
                                              offs_n, L, qk_scale, stride_kl, stride_vl, k_scales,
                                              RAGGED=True, USE_TMA=USE_TMA, QK_INT8=QK_INT8)
        acc = acc / l_i[:, None]
        if PIECES > 1:  # every row of a piece saw at least one real key, so l_i >= 1
            slot = (b * tl.num_programs(0) + tl.program_id(0)).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
            tl.store(PART_O + slot[:, None] * D + offs_d[None, :], acc)
            tl.store(PART_LSE + slot, m_i + tl.math.log2(l_i))
        else:
            if WITH_LINEAR:
                acc = _add_linear_branch(acc, qf_ptrs, row_real, KVW, KSUM, BIAS, pid_bh, stride_ksum, eps_over_len,
                                         offs_d, D=D)
            o_ptrs = O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
            tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_real)

    @triton.jit
    def _add_linear_branch(acc, qf_ptrs, row_real, KVW, KSUM, BIAS, pid_bh, stride_ksum, eps_over_len, offs_d,
                           D: tl.constexpr):
        """acc + o_l, the linear branch of these rows (see `_sla_attention_kernel`), accumulated by the MMA."""
        qf = tl.load(qf_ptrs, mask=row_real, other=0.0).to(tl.float32)
        e = tl.math.exp2((qf - tl.max(qf, axis=1)[:, None]) * 1.4426950408889634)  # phi(q) * sum(e)
        w = e * tl.load(KSUM + pid_bh.to(tl.int64) * stride_ksum + offs_d)[None, :]
        denom = tl.sum(w, axis=1) + eps_over_len * tl.sum(e, axis=1)
        kvw = tl.load(KVW + pid_bh.to(tl.int64) * D * D + offs_d[:, None] * D + offs_d[None, :])
        acc = tl.dot((w / denom[:, None]).to(kvw.dtype), kvw, acc, input_precision=FP32_DOT_PRECISION)
        return acc + tl.load(BIAS + offs_d).to(tl.float32)[None, :]

    @triton.jit
    def _sla_tail_combine_kernel(
        Q, O, KVW, KSUM, BIAS, PART_O, PART_LSE,
        stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh,
        stride_ksum, L, H, eps_over_len, programs_per_head, unit0,
        D: tl.constexpr, BLOCK_M: tl.constexpr, ROWS: tl.constexpr, PIECES: tl.constexpr,
        WITH_LINEAR: tl.constexpr,
    ):
        """ROWS rows of one split unit of the wave tail: merge the unit's PIECES partial softmax outputs (weights
        2^(lse_i - max), pieces in order), add the linear branch and store. Grid (tail units * BLOCK_M / ROWS, B):
        several small programs per unit, so the merge's loads spread over many SMs."""
        SUB: tl.constexpr = BLOCK_M // ROWS
        b = tl.program_id(1)
        local = tl.program_id(0) // SUB
        unit = unit0 + local
        h = unit // programs_per_head
        pid_bh = b * H + h
        rows = (tl.program_id(0) % SUB) * ROWS + tl.arange(0, ROWS)
        offs_m = (unit % programs_per_head) * BLOCK_M + rows
        offs_d = tl.arange(0, D)
        row_real = (offs_m < L)[:, None]
        slot0 = (b * (tl.num_programs(0) // SUB) + local).to(tl.int64) * PIECES * BLOCK_M + rows
        lse_max = tl.full([ROWS], float("-inf"), dtype=tl.float32)
        for i in tl.static_range(PIECES):
            lse_max = tl.maximum(lse_max, tl.load(PART_LSE + slot0 + i * BLOCK_M))
        acc = tl.zeros([ROWS, D], dtype=tl.float32)
        w_sum = tl.zeros([ROWS], dtype=tl.float32)
        for i in tl.static_range(PIECES):
            w = tl.math.exp2(tl.load(PART_LSE + slot0 + i * BLOCK_M) - lse_max)
            acc += w[:, None] * tl.load(PART_O + (slot0 + i * BLOCK_M)[:, None] * D + offs_d[None, :])
            w_sum += w
        acc = acc / w_sum[:, None]
        if WITH_LINEAR:
            q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_ql + offs_d[None, :]
            acc = _add_linear_branch(acc, q_ptrs, row_real, KVW, KSUM, BIAS, pid_bh, stride_ksum, eps_over_len,
                                     offs_d, D=D)
        o_ptrs = O + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_ol + offs_d[None, :]
        tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=row_real)


def _launch_config(dtype: torch.dtype, blocks_per_step: int = 1) -> dict:
    """Fixed launch configs (no autotuning, so the bits never depend on a tuning run).

    16-bit inputs: the fused-attention tutorial's Hopper setting (8 warps, 3 stages of 64-key K/V tiles; 2 stages
    when a step loads two or more k-blocks, which keeps shared memory at ~160 KB). float32 tiles are twice as
    large, so float32 runs unpipelined (~130 KB).
    """
    fma = dict(enable_fp_fusion=True)  # pinned: Triton 3.10 flips its default, which would change the bits
    stats = dict(num_warps=STATS_LAUNCH["num_warps"], num_stages=STATS_LAUNCH["num_stages"], **fma)
    if dtype == torch.float32:
        return dict(attention=dict(num_warps=8, num_stages=1, **fma), stats={**stats, "num_stages": 1})
    return dict(attention=dict(num_warps=8, num_stages=2 if blocks_per_step > 1 else 3, **fma), stats=stats)


def _tma_layout_ok(x: torch.Tensor) -> bool:
    """TMA needs a (B*L, H*D) 2D view of x with a 16-byte aligned base and row stride."""
    B, L, H, D = x.shape
    sb, sl, sh, sd = x.stride()
    aligned = x.data_ptr() % 16 == 0 and (sl * x.element_size()) % 16 == 0
    return TensorDescriptor is not None and aligned and sd == 1 and sh == D and (B == 1 or sb == L * sl)


def _is_hopper_or_newer(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.get_device_capability(x.device)[0] >= 9


def _kv_descriptor(x: torch.Tensor, block_n: int):
    B, L, H, D = x.shape
    return TensorDescriptor(x, [B * L, H * D], [x.stride(1), 1], [block_n, D])


def _as_kernel_input(x: torch.Tensor) -> torch.Tensor:
    """Any (B, L, H, D) strides work as long as the head dim is contiguous; copy only when it is not."""
    return x if x.stride(-1) == 1 else x.contiguous()


def sla_prologue(q, k, v, proj_weight, block_q: int = 128, block_k: int = 64, kvw_dtype=None):
    """Two Triton launches over q, k, v -> (pooled q, smoothed pooled k, kvw, sum phi(k) / L).

    Shapes: (B, H, nq, D) and (B, H, nk, D) float32 (the router's inputs: pooled k already has mean_L(k)
    subtracted), kvw (B, H, D, D) in kvw_dtype (default q's) = diag(1 / sum phi(k)) (phi(k)^T v) @ W^T, and
    (B, H, D) float32. The statistics pass writes per-chunk partials; the finalize kernel sums them in chunk
    order (the chunking depends on the shape only).
    """
    B, L, H, D = q.shape
    ratio = block_q // block_k
    nq, nk = -(-L // block_q), -(-L // block_k)
    tile = min(max(STATS_LAUNCH["tile"], block_k), 16 * block_k)  # powers of two: tile | block_q or block_q | tile
    tiles_per_q_block = max(1, block_q // tile)
    n_tiles = -(-L // tile)
    # at most target_programs per batch item (one wave at B = 1: a few straggler programs would double the time);
    # per item, not per batch, so an item's chunking (its summation order) never depends on the batch size
    chunks_per_head = max(1, STATS_LAUNCH["target_programs"] // H)
    tiles_per_chunk = -(-n_tiles // chunks_per_head)
    tiles_per_chunk = -(-tiles_per_chunk // tiles_per_q_block) * tiles_per_q_block
    n_chunks = -(-n_tiles // tiles_per_chunk)
    f32 = dict(dtype=torch.float32, device=q.device)
    q_pool, k_pool = torch.empty(B, H, nq, D, **f32), torch.empty(B, H, nk, D, **f32)
    stats = torch.empty(B, H, n_chunks, D * D + 2 * D, **f32)
    _sla_stats_kernel[(n_chunks, B * H)](
        q, k, v, q_pool, k_pool, stats,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        L, H, nq, nk, tiles_per_chunk, 1.0 / L,
        D=D, BLOCK_N=block_k, RATIO=ratio, TILE=tile,
        POOL_PRECISION="tf32x3" if q.dtype == torch.float32 else "tf32",  # the 0/1 selector is exact in tf32
        **_launch_config(q.dtype)["stats"],
    )
    weight = proj_weight.detach().to(device=q.device)
    if weight.shape != (D, D):
        raise ValueError(f"proj_l weight must be ({D}, {D}), got {tuple(weight.shape)}")
    weight = weight.contiguous()
    kvw = torch.empty(B, H, D, D, dtype=kvw_dtype or q.dtype, device=q.device)
    k_sum_mean = torch.empty(B, H, D, **f32)
    rows = min(32, D)
    _sla_finalize_kernel[(B * H, D // rows)](
        stats, weight, k_pool, kvw, k_sum_mean, n_chunks, nk, D=D, ROWS=rows, POOL_TILE=64,
        num_warps=4, num_stages=1, enable_fp_fusion=True,
    )
    return q_pool, k_pool, kvw, k_sum_mean


def sla_select_blocks(scores: torch.Tensor, n_keep: int, rows: int | None = None,
                      num_warps: int | None = None) -> torch.Tensor:
    """scores (B, H, nq, nk) float32 -> int32 (B, H, nq, n_keep): the n_keep best k-blocks of every row in
    ascending order, ties to the lower index; one Triton launch, the same choice as `_rank_blocks`' two sorts."""
    B, H, nq, nk = scores.shape
    scores = scores.contiguous()
    kept = torch.empty(B, H, nq, n_keep, dtype=torch.int32, device=scores.device)
    n_rows, width = B * H * nq, triton.next_power_of_2(nk)
    # rows / num_warps: overrides for benchmark sweeps only. One row per program, a warp per 512 columns: the 32
    # bisection steps then reduce within few warps (bench/experiments/plan_variants.py, H200). 1.3B (12 x 256 x 512):
    # 1 row x 1 warp 0.021 ms, 2 x 1 0.024, 1 x 2 0.022, 4 x 4 0.026, 8 x 4 (the old default) 0.042 ms;
    # 14B 720p (40 x 591 x 1182): 1 row x 4 warps 0.60 ms, 2 x 8 0.81 ms.
    rows = rows or 1
    num_warps = num_warps or max(1, min(4, width // 512))
    _sla_select_kernel[(-(-n_rows // rows),)](
        scores, kept, n_rows, nk, n_keep, ROWS=rows, NK=width, num_warps=num_warps,
    )
    return kept


def sla_sparse_attention(q, k, v, kept, kvw=None, k_sum_mean=None, bias=None, block_q: int = 128,
                         block_k: int = 64, use_tma: bool | None = None, pairs: bool | None = None,
                         blocks_per_step: int | None = None, gather: bool | None = None,
                         launch: dict | None = None, rows_per_program: int | None = None,
                         qk_int8: tuple | None = None, wave_slots: int | None = None,
                         kernel: str | None = None) -> torch.Tensor:
    """The fused kernel alone: the sparse branch over `kept`, plus the linear epilogue when kvw is given.

    kvw (B, H, D, D) in q's dtype = diag(1 / sum phi(k)) (phi(k)^T v) @ W^T; k_sum_mean (B, H, D) float32 =
    sum phi(k) / L; bias (D,) float32. `use_tma` / `pairs` None pick the default variant for the device (TMA
    loads and `HOPPER_ATTENTION` on Hopper+, see the module constants); benchmarks and tests may force either.
    `blocks_per_step` (1 or 2; overrides `pairs`), `gather` (pointer-load pairs as one tile; None: the
    Hopper default), `launch` (num_warps / num_stages) and `rows_per_program` (a divisor of block_q: that many
    programs share each q-block's kept list; default one per q-block) are for sweeps.
    `qk_int8` = (q8, q_scale, k8, k_scale) from `quantize_qk_int8_reference`: QK^T in int8 (pointer loads, no gathering);
    q, k, v stay the 16-bit tensors (q feeds the linear branch, v the PV MMA).
    `wave_slots`: programs per wave that the wave-tail split plans for (`_tail_split`; None: `TAIL_SPLIT` for the
    Triton kernel on the Hopper path, off elsewhere and for the Gluon kernel; 0: off). It is a fixed number, never
    read from the device, so the bits depend on the shape only.
    `kernel`: "gluon" (the warp-specialized sm_90 kernel, `kernels/sla_gluon.py`), "triton", or None: Gluon on
    sm_90 when no Triton variant is forced and the inputs allow it (`GLUON_ON_HOPPER`).
    """
    global _PLAIN_VARIANT_ONLY, _TRITON_KERNEL_ONLY
    B, L, H, D = q.shape
    with_linear = kvw is not None
    tma_ok = _tma_layout_ok(k) and _tma_layout_ok(v)
    if use_tma and not tma_ok:
        raise ValueError("TMA loads need K and V viewable as (B*L, H*D) with 16-byte aligned rows")
    auto = use_tma is None and pairs is None and blocks_per_step is None and gather is None and launch is None
    fast_variants = q.dtype != torch.float32 and _is_hopper_or_newer(q) and not _PLAIN_VARIANT_ONLY
    if use_tma is None:
        use_tma = USE_TMA_ON_HOPPER and fast_variants and tma_ok
    if blocks_per_step not in (None, 1, 2):
        raise ValueError(f"blocks_per_step must be 1 or 2, got {blocks_per_step}")
    config = _launch_config(q.dtype, 1)["attention"]
    if blocks_per_step is None and pairs is None and fast_variants:
        blocks_per_step = HOPPER_ATTENTION["blocks_per_step"]
        config.update(num_warps=HOPPER_ATTENTION["num_warps"], num_stages=HOPPER_ATTENTION["num_stages"])
    elif blocks_per_step is None:
        blocks_per_step = 2 if pairs else 1
        config = _launch_config(q.dtype, blocks_per_step)["attention"]
    else:
        config = _launch_config(q.dtype, blocks_per_step)["attention"]
    config.update(launch or {})
    if gather is None:
        gather = HOPPER_ATTENTION["gather"] and fast_variants
    gather = bool(gather) and blocks_per_step >= 2 and not use_tma
    out = torch.empty(B, L, H, D, dtype=q.dtype, device=q.device)
    if with_linear and (k_sum_mean.stride(0) != H * k_sum_mean.stride(1) or k_sum_mean.stride(2) != 1):
        k_sum_mean = k_sum_mean.contiguous()
    if not with_linear:  # the epilogue's pointers are never read; any tensor fills the slots
        kvw = k_sum_mean = bias = out
    rows = rows_per_program or block_q
    if block_q % rows or rows < 16:
        raise ValueError(f"rows_per_program ({rows}) must divide block_q ({block_q}) and be at least 16")
    if kernel not in (None, "gluon", "triton"):
        raise ValueError(f"kernel must be 'gluon', 'triton' or None, got {kernel!r}")
    gluon_ok = (q.is_cuda and torch.cuda.get_device_capability(q.device)[0] == 9 and qk_int8 is None
                and rows == block_q and sla_gluon.gluon_layout_ok(q, k, v, kvw if with_linear else None, block_q,
                                                                   block_k))
    if kernel == "gluon" and not gluon_ok:
        raise ValueError("the Gluon kernel needs an sm_90 GPU, 16-bit TMA-viewable q/k/v with head dim 128, "
                         "128/64-token blocks and one program per q-block")
    use_gluon = kernel == "gluon" or (kernel is None and auto and GLUON_ON_HOPPER and gluon_ok
                                      and not _TRITON_KERNEL_ONLY)
    if wave_slots is None:  # the split pays for the Triton kernel only (`TAIL_SPLIT`)
        wave_slots = TAIL_SPLIT["wave_slots"] if fast_variants and qk_int8 is None and not use_gluon else 0
    tail = _tail_split(H * -(-L // rows), kept.shape[-1], wave_slots)
    args = (q, k, v, kept, kvw, k_sum_mean, bias, out, block_q, block_k, with_linear, rows, tail)
    if use_gluon:
        try:
            _launch_attention(*args, use_tma=False, group=2, gather=False, config=config, gluon=True)
            return out
        except Exception as exc:  # noqa: BLE001 - the auto pick falls back to the Triton kernel, loudly
            if kernel == "gluon":
                raise
            warnings.warn(f"SLA: the Gluon kernel failed with this Triton ({type(exc).__name__}: {exc}); using "
                          "the Triton kernel from now on")
            _TRITON_KERNEL_ONLY = True
    if qk_int8 is not None:
        if D < 32:
            raise ValueError(f"int8 QK^T needs a head dim of at least 32 (the int8 MMA's K step), got {D}")
        _launch_attention(*args, use_tma=False, group=blocks_per_step, gather=False, config=config, qk_int8=qk_int8)
        return out
    try:
        _launch_attention(*args, use_tma=use_tma, group=blocks_per_step, gather=gather, config=config)
    except Exception as exc:  # noqa: BLE001 - only the auto-picked Hopper variants fall back, and loudly
        if not (auto and (use_tma or blocks_per_step > 1 or gather)):
            raise
        warnings.warn(f"SLA: the Hopper kernel variant (tma={use_tma}, blocks_per_step={blocks_per_step}) failed "
                      f"with this Triton ({type(exc).__name__}: {exc}); using pointer loads and one k-block per "
                      "step from now on")
        _PLAIN_VARIANT_ONLY = True
        _launch_attention(*args, use_tma=False, group=1, gather=False, config=_launch_config(q.dtype, 1)["attention"])
    return out


def _tail_split(units: int, n_keep: int, wave_slots: int) -> tuple[int, int, int]:
    """(tail units, pieces, chunk): how the last, partial wave of an item's `units` equal programs is spread.

    The fused kernel's programs all take the same time and fill one SM each, so `units % wave_slots` leftover
    programs would run as a last wave with most SMs idle (at 1.3B: 3072 programs, 36 in the 24th wave). Those
    units are split instead over `pieces` programs of `chunk` kept blocks each (flash-decoding style, merged by
    `_sla_tail_combine_kernel`), so the tail takes a fraction of a program's time. (0, 1, n_keep): no split.
    """
    tail = units % wave_slots if wave_slots else 0
    if not tail:
        return 0, 1, n_keep
    pieces = min(wave_slots // tail, TAIL_SPLIT["max_pieces"], n_keep // TAIL_SPLIT["min_blocks"])
    pairs = -(-n_keep // 2)
    chunk = 2 * -(-pairs // max(pieces, 1))  # even, so a pair of blocks never straddles two pieces
    pieces = -(-n_keep // chunk)
    return (tail, pieces, chunk) if pieces > 1 else (0, 1, n_keep)


def _launch_attention(q, k, v, kept, kvw, k_sum_mean, bias, out, block_q, block_k, with_linear, rows, tail, use_tma,
                      group, gather, config, qk_int8=None, gluon=False):
    """The fused kernel over every unit (one program's rows of one head); with a wave-tail split, the whole units
    first, then the tail's pieces and their merge (three launches). `gluon`: the first two through
    `sla_gluon.launch_gluon_attention` (same program numbering and partial-output layout)."""
    B, L, H, D = q.shape
    n_tail, pieces, chunk = tail
    programs_per_head = -(-L // rows)
    n_whole = H * programs_per_head - n_tail
    qf, q_scale, k_scale = q, out, out  # unused unless qk_int8
    if qk_int8 is not None:
        q, q_scale, k, k_scale = qk_int8
    part_o = part_lse = out  # unused without a tail split
    if n_tail:
        part_o = torch.empty(B, n_tail * pieces, rows, D, dtype=torch.float32, device=q.device)
        part_lse = torch.empty(B, n_tail * pieces, rows, dtype=torch.float32, device=q.device)
    launches = [(n, unit0, p) for n, unit0, p in ((n_whole, 0, 1), (n_tail * pieces, n_whole, pieces)) if n]
    if gluon:
        sla_gluon.launch_gluon_attention(q, k, v, kept, kvw, k_sum_mean, bias, out, part_o, part_lse,
                                         programs_per_head, block_q, block_k, with_linear, LOG2E / math.sqrt(D),
                                         LINEAR_EPS / L, [(n, unit0, p, chunk) for n, unit0, p in launches])
        launches = []
    k_arg = _kv_descriptor(k, block_k) if use_tma and launches else k
    v_arg = _kv_descriptor(v, block_k) if use_tma and launches else v
    for n_programs, unit0, n_pieces in launches:
        _sla_attention_kernel[(n_programs, B)](
            q, k_arg, v_arg, out, kept, kvw, k_sum_mean, bias, qf, q_scale, k_scale,
            q.stride(0), q.stride(1), q.stride(2),
            qf.stride(0), qf.stride(1), qf.stride(2),
            k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2),
            out.stride(0), out.stride(1), out.stride(2),
            k_sum_mean.stride(1), L, H, kept.shape[-1], LOG2E / math.sqrt(D), LINEAR_EPS / L,
            programs_per_head, unit0, chunk, part_o, part_lse,
            D=D, BLOCK_M=rows, BLOCK_N=block_k, USE_TMA=use_tma, GROUP=group, GATHER=gather,
            WITH_LINEAR=with_linear, Q_SPLIT=block_q // rows, QK_INT8=qk_int8 is not None, PIECES=n_pieces,
            **config,
        )
    if n_tail:
        merge_rows = min(rows, TAIL_SPLIT["merge_rows"])
        _sla_tail_combine_kernel[(n_tail * (rows // merge_rows), B)](
            qf, out, kvw, k_sum_mean, bias, part_o, part_lse,
            qf.stride(0), qf.stride(1), qf.stride(2), out.stride(0), out.stride(1), out.stride(2),
            k_sum_mean.stride(1), L, H, LINEAR_EPS / L, programs_per_head, n_whole,
            D=D, BLOCK_M=rows, ROWS=merge_rows, PIECES=pieces, WITH_LINEAR=with_linear, num_warps=4, num_stages=1,
            enable_fp_fusion=True,
        )


def _check_triton_inputs(q, k, v, block_q: int, block_k: int):
    _check_inputs(q, k, v, block_q, block_k)
    if triton is None:
        raise RuntimeError("sla_triton needs Triton; use sla_reference instead")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"q, k, v must share one dtype among bf16/fp16/fp32, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] not in SUPPORTED_HEAD_DIMS:
        raise ValueError(f"head dim must be one of {SUPPORTED_HEAD_DIMS}, got {q.shape[-1]}")
    for name, blk in (("block_q", block_q), ("block_k", block_k)):
        if blk < 16 or blk & (blk - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {blk}")
    if block_q % block_k:
        raise ValueError(f"block_q ({block_q}) must be a multiple of block_k ({block_k})")
    L, row_stride = q.shape[1], max(x.stride(1) for x in (q, k, v))
    if (L + block_q) * max(row_stride, q.shape[2] * q.shape[3]) >= 2**31:
        raise ValueError(f"L={L} is too long for the kernels' 32-bit in-sequence offsets")


def sla_triton_plan(q, k, v, proj_weight, proj_bias, topk: float, block_q: int = 128, block_k: int = 64):
    """Everything before the fused kernel: (kept blocks, kvw, sum phi(k) / L, bias), in four launches
    (statistics, finalize, the score matmul, the top-k selection), with no host sync.

    Routing matches `sla_router` up to float32 summation order inside a block (it could only differ on
    scores that tie to ~1e-7).
    """
    q_pool, k_pool, kvw, k_sum_mean = sla_prologue(q, k, v, proj_weight, block_q, block_k)
    kept = sla_select_blocks(q_pool @ k_pool.transpose(-1, -2), n_kept_blocks(topk, k_pool.shape[2]))
    bias = proj_bias.detach().to(device=q.device, dtype=torch.float32).contiguous()
    return kept, kvw, k_sum_mean, bias


@torch.no_grad()
def sla_triton(q, k, v, proj_weight, proj_bias, topk: float, block_q: int = 128, block_k: int = 64):
    """SLA on the GPU: one Triton statistics pass, routing on the tiny pooled tensors, one fused Triton kernel.

    Same semantics as `sla_reference`; bf16/fp16 inputs run bf16/fp16 MMAs, float32 inputs TF32 MMAs (exact
    under TRITON_INTERPRET), all with float32 accumulation and softmax. q, k, v may be any (B, L, H, D) views
    with a contiguous head dim.
    """
    _check_triton_inputs(q, k, v, block_q, block_k)
    q, k, v = (_as_kernel_input(x) for x in (q, k, v))
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        kept, kvw, k_sum_mean, bias = sla_triton_plan(q, k, v, proj_weight, proj_bias, topk, block_q, block_k)
        return sla_sparse_attention(q, k, v, kept, kvw, k_sum_mean, bias, block_q, block_k)
