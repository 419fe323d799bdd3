"""SLA's sparse branch with 8-bit tensor-core operands on Hopper (SageAttention's recipe): an experiment.

Why: the 1.3B forward runs at the H100's 700 W power cap (bench/experiments/clocks_under_load.py), so a kernel is
as fast as the energy it spends, and the bf16 kernel (`kernels/sla_gluon.py`) spends most of it on its MMAs and on
moving 64 KB of keys and values into shared memory per step. Here QK^T is int8 x int8 (q per token, the smoothed
key per 64-token block, `sla.quantize_qk_int8_reference`) and P V is fp8 e4m3 x e4m3 (P scaled by 448 to fill
e4m3's range, v per channel, stored transposed because Hopper's fp8 MMA reads both operands K-major): half the
bytes and MMA work of bf16. TurboDiffusion's SageSLA runs the same split (int8 QK^T, fp8 P V).

Same program structure as the bf16 kernel: a TMA producer and two consumer warpgroups (64 rows each) with the
intra-warpgroup overlap (step j's QK^T under step j-1's P V). A step's two k-blocks are two N = 64 MMAs, because
the transposed values of the two blocks are two separate [D, 64] tiles. The int8 logits accumulate on top of the
int32 bits of 1.5 * 2^23, so the float they spell is 1.5 * 2^23 + s exactly (|s| < 2^21 for D = 128) and one FFMA
turns them into scaled logits without an int-to-float conversion.

One launch, no wave-tail split; the linear branch reads the 16-bit q. e4m3's register layout for the P V MMA's A
operand differs from the logits' accumulator layout; as FA3 does, P's columns are relabelled instead of moved
(`_keys_in_mma_order`, a reshape and permute whose layout conversion the compiler proves trivial) and the keys of
each 64-key block of V^T are stored in the same order (`MMA_KEY_ORDER`). That removed 64 shuffles and 320 byte
permutes from the kernel's sm_90 PTX and took the kernel from 1.379 to 1.217 ms. Not wired into the model, because
it gains too little: on an H100 at 1.3B 480p (bench/experiments/sla_8bit_ab.py, same run) 1.217 ms against 1.264 ms
for the bf16 kernel in one launch (4%, less than the quantization passes it would need), with 3.2-3.5e-2 relative
error against the float32 reference (bf16 kernel 1.9e-3; most of it from the fp8 P V). The step is bound by the
softmax as much as by the MMAs: halving the MMA work leaves the exp2s and the rescaling. One N = 128 QK^T MMA a step
over both blocks (one softmax pass) measured slower at 1.3B: 1.305 ms (1.234 with 4 stages); at 14B 720p it took
18.8 ms against 20.3 for the bf16 kernel.
"""
from __future__ import annotations

import math

import torch

from kernels import sla, sla_gluon

gluon = sla_gluon.gluon
if gluon is not None:
    from kernels.gluon_tma import descriptor
    from kernels.sla_gluon import (_barriers, _finish, _kept_range, _tma_load, _unit_of_program, gl, mbarrier,
                                   warpgroup_mma, warpgroup_mma_wait)

FP8_MAX = 448.0
MAGIC_BITS = 0x4B400000  # the float 1.5 * 2^23 as int32 bits
MAGIC = 12582912.0
LOG2_FP8_MAX = math.log2(FP8_MAX)
SLA_8BIT = dict(stages=3, consumer_regs=240, num_warps=4)


# The key each slot of a 64-key block holds in V^T: the order `_keys_in_mma_order` gives P's columns.
MMA_KEY_ORDER = torch.arange(64).view(2, 2, 2, 2, 2, 2).permute(0, 1, 3, 4, 2, 5).reshape(64)


def quantize_sla_8bit_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_k: int = 64):
    """(q8, q_scale, k8, k_scale) as `sla.quantize_qk_int8_reference`, plus v per channel as transposed e4m3:
    vt8 (B, H, D, L rounded up to 64) with zero padding and each 64-key block's keys in `MMA_KEY_ORDER`, v_scale
    (B, H, D) = amax over L / 448."""
    q8, q_scale, k8, k_scale = sla.quantize_qk_int8_reference(q, k, block_k)
    B, L, H, D = v.shape
    v_scale = v.float().abs().amax(1).clamp_min(1e-12) / FP8_MAX  # (B, H, D)
    lpad = -(-L // 64) * 64
    vt = torch.zeros(B, H, D, lpad, dtype=torch.float32, device=v.device)
    vt[..., :L] = (v.float() / v_scale[:, None]).permute(0, 2, 3, 1)
    vt8 = vt.view(B, H, D, lpad // 64, 64)[..., MMA_KEY_ORDER.to(v.device)].view(B, H, D, lpad)
    return q8, q_scale, k8, k_scale, vt8.to(torch.float8_e4m3fn), v_scale


if gluon is not None:
    _MAGIC_BITS = gl.constexpr(MAGIC_BITS)
    _MAGIC = gl.constexpr(MAGIC)
    _LOG2_FP8_MAX = gl.constexpr(LOG2_FP8_MAX)

    @gluon.jit
    def _producer8(q_desc, k_desc, vt_desc, kvw_desc, q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar,
                   k_ready, k_empty, v_ready, v_empty, KEPT, L, H, n_keep, programs_per_head,
                   D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                   WITH_LINEAR: gl.constexpr):
        """TMA loads: the int8 q tile, the linear branch's matrix, then per step both int8 k-blocks into the K ring
        and both transposed fp8 value tiles into the V ring."""
        b, h, pid_m = _unit_of_program(programs_per_head, 0, 1)
        mbarrier.expect(q_bar, BLOCK_M * D)
        _tma_load(q_desc, [b * L + pid_m * BLOCK_M, h * D], q_bar, q_smem)
        if WITH_LINEAR:
            mbarrier.expect(kvw_bar, D * D * 2)
            _tma_load(kvw_desc, [(b * H + h) * D, 0], kvw_bar, kvw_smem)
        kept = KEPT + ((b * H + h).to(gl.int64) * programs_per_head + pid_m) * n_keep
        lo, hi, n_steps = _kept_range(n_keep, n_keep, 1)
        row0 = b * L
        col0 = h * D
        vt_row0 = (b * H + h) * D
        for j in range(n_steps):
            s = j % STAGES
            phase = ((j // STAGES) & 1) ^ 1  # a fresh barrier passes parity 1 at once
            first = lo + 2 * j
            start_a = gl.load(kept + first) * BLOCK_N
            start_b = gl.load(kept + gl.minimum(first + 1, hi - 1)) * BLOCK_N  # an odd count's copy is masked
            mbarrier.wait(k_empty.index(s), phase)
            bar = k_ready.index(s)
            mbarrier.expect(bar, 2 * BLOCK_N * D)
            _tma_load(k_desc, [row0 + start_a, col0], bar, k_smem.index(s).slice(0, BLOCK_N))
            _tma_load(k_desc, [row0 + start_b, col0], bar, k_smem.index(s).slice(BLOCK_N, BLOCK_N))
            mbarrier.wait(v_empty.index(s), phase)
            bar = v_ready.index(s)
            mbarrier.expect(bar, 2 * BLOCK_N * D)
            _tma_load(vt_desc, [vt_row0, start_a], bar, v_smem.index(2 * s))
            _tma_load(vt_desc, [vt_row0, start_b], bar, v_smem.index(2 * s + 1))

    @gluon.jit
    def _keys_in_mma_order(p):
        """P's 64 columns reordered (no data movement) so the logits' accumulator registers are the fp8 P V MMA's
        A operand: column bits (b5, b4, b3, b2, b1, b0) -> MMA k bits (b5, b4, b2, b1, b3, b0)."""
        rows: gl.constexpr = p.shape[0]
        p = p.reshape([rows, 2, 2, 2, 2, 2, 2]).permute(0, 1, 2, 4, 5, 3, 6)
        return p.reshape([rows, 64])

    @gluon.jit
    def _softmax8(sa, sb, m_i, l_i, c_row, ks_a, ks_b, real_a, real_b, masked, p_layout: gl.constexpr):
        """One step's online softmax from the int8 logits of its two blocks: (P_a, P_b) as 448 * p in e4m3 for
        the P V MMA, the new row max (base-2 logits), the new 448-scaled row sum, and the accumulator's factor."""
        ya = sa.to(gl.float32, bitcast=True) * ks_a - _MAGIC * ks_a  # one FFMA: s * k-scale, exactly rounded
        yb = sb.to(gl.float32, bitcast=True) * ks_b - _MAGIC * ks_b
        if masked:
            ya = gl.where(real_a[None, :], ya, float("-inf"))
            yb = gl.where(real_b[None, :], yb, float("-inf"))
        m_new = gl.maximum(m_i, gl.maximum(gl.max(ya, axis=1), gl.max(yb, axis=1)) * c_row)
        shift = m_new - _LOG2_FP8_MAX
        pa = gl.exp2(ya * c_row[:, None] - shift[:, None])
        pb = gl.exp2(yb * c_row[:, None] - shift[:, None])
        alpha = gl.exp2(m_i - m_new)
        l_new = l_i * alpha + (gl.sum(pa, axis=1) + gl.sum(pb, axis=1))
        pa8 = gl.convert_layout(_keys_in_mma_order(pa.to(gl.float8e4nv)), p_layout, assert_trivial=True)
        pb8 = gl.convert_layout(_keys_in_mma_order(pb.to(gl.float8e4nv)), p_layout, assert_trivial=True)
        return pa8, pb8, m_new, l_new, alpha

    @gluon.jit
    def _step_mask(kept, lo, last, j, L, BLOCK_N: gl.constexpr, col_s: gl.constexpr):
        """Which keys of step j's two blocks are real: inside L, and not an odd count's duplicated block."""
        first = lo + 2 * j
        cols = gl.arange(0, BLOCK_N, layout=col_s)
        real_a = gl.load(kept + first) * BLOCK_N + cols < L
        real_b = (gl.load(kept + gl.minimum(first + 1, last)) * BLOCK_N + cols < L) & (first + 1 <= last)
        return real_a, real_b

    @gluon.jit
    def _store8(acc, m_i, l_i, kvw_smem, kvw_bar, Q16, O, KSUM, BIAS, VS, stride_qb, stride_ql, stride_qh,
                stride_ob, stride_ol, stride_oh, stride_ksum, L, b, h, pid_m, pid_bh, eps_over_len,
                D: gl.constexpr, BLOCK_M: gl.constexpr, WITH_LINEAR: gl.constexpr, ROWS: gl.constexpr,
                CID: gl.constexpr):
        """The value scales, then the bf16 kernel's epilogue (normalization, linear branch, store)."""
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 32])
        col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
        offs_d = gl.arange(0, D, layout=col_o)
        acc = acc * gl.load(VS + pid_bh.to(gl.int64) * D + offs_d)[None, :]
        # the bf16 kernel's accumulator layout (the same registers: an MMA's K step does not move its output)
        o16_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, D, 16])
        acc = gl.convert_layout(acc, o16_layout)
        row_o16: gl.constexpr = gl.SliceLayout(1, o16_layout)
        col_o16: gl.constexpr = gl.SliceLayout(0, o16_layout)
        rows_o = pid_m * BLOCK_M + CID * ROWS + gl.arange(0, ROWS, layout=row_o16)
        offs_d = gl.arange(0, D, layout=col_o16)
        if WITH_LINEAR:
            qf = gl.load(Q16 + b.to(gl.int64) * stride_qb + h * stride_qh + rows_o[:, None].to(gl.int64) * stride_ql
                         + offs_d[None, :], mask=(rows_o < L)[:, None], other=0.0).to(gl.float32)
        else:
            qf = acc  # not read
        _finish(acc, m_i - _LOG2_FP8_MAX, l_i, qf, kvw_smem, kvw_bar, O, KSUM, BIAS, O, O,
                stride_ob, stride_ol, stride_oh, stride_ksum, L, b, h, pid_m, pid_bh, eps_over_len,
                D, BLOCK_M, 1, WITH_LINEAR, ROWS, CID)

    @gluon.jit
    def _consumer8(q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                   KEPT, Q16, O, KSUM, BIAS, QS, KS, VS,
                   stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh, stride_ksum,
                   L, H, n_keep, n_kblocks, qk_scale, eps_over_len, programs_per_head,
                   D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                   WITH_LINEAR: gl.constexpr, ROWS: gl.constexpr, CID: gl.constexpr):
        """One warpgroup's ROWS rows: the overlapped online softmax over the kept blocks in 8-bit MMAs, then the
        value scales, the linear branch and the store."""
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)

        b, h, pid_m = _unit_of_program(programs_per_head, 0, 1)
        pid_bh = b * H + h
        kept = KEPT + (pid_bh.to(gl.int64) * programs_per_head + pid_m) * n_keep
        lo, hi, n_steps = _kept_range(n_keep, n_keep, 1)
        q_rows = q_smem.slice(CID * ROWS, ROWS)
        rows_s = pid_m * BLOCK_M + CID * ROWS + gl.arange(0, ROWS, layout=row_s)
        # rows past L: q8 is TMA's zero fill; scale 1 keeps their logits 0 (finite), and they are never stored
        c_row = gl.load(QS + pid_bh.to(gl.int64) * L + rows_s, mask=rows_s < L, other=1.0) * qk_scale
        ks_row = KS + pid_bh.to(gl.int64) * n_kblocks
        magic = gl.full([ROWS, BLOCK_N], _MAGIC_BITS, gl.int32, layout=s_layout)
        acc = gl.zeros([ROWS, D], gl.float32, layout=o_layout)
        last = hi - 1
        last_ragged = (gl.load(kept + last) * BLOCK_N + BLOCK_N > L)
        mask_last = last_ragged | (hi % 2 == 1)
        mbarrier.wait(q_bar, 0)

        # step 0: its logits and softmax; its P V waits for step 1's QK^T
        mbarrier.wait(k_ready.index(0), 0)
        sa = warpgroup_mma(q_rows, k_smem.index(0).slice(0, BLOCK_N).permute((1, 0)), magic)
        sb = warpgroup_mma(q_rows, k_smem.index(0).slice(BLOCK_N, BLOCK_N).permute((1, 0)), magic)
        mbarrier.arrive(k_empty.index(0), count=1)
        ks_a = gl.load(ks_row + gl.load(kept + lo))
        ks_b = gl.load(ks_row + gl.load(kept + gl.minimum(lo + 1, last)))
        real_a, real_b = _step_mask(kept, lo, last, 0, L, BLOCK_N, col_s)
        m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.full([ROWS], 0.0, gl.float32, layout=row_s)
        pa, pb, m_i, l_i, alpha = _softmax8(sa, sb, m_i, l_i, c_row, ks_a, ks_b, real_a, real_b,
                                            mask_last and n_steps == 1, p_layout)
        for j in range(1, n_steps):
            s = j % STAGES
            sp = (j - 1) % STAGES
            first = lo + 2 * j
            mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
            sa_tok = warpgroup_mma(q_rows, k_smem.index(s).slice(0, BLOCK_N).permute((1, 0)), magic,
                                   is_async=True)
            sb_tok = warpgroup_mma(q_rows, k_smem.index(s).slice(BLOCK_N, BLOCK_N).permute((1, 0)), magic,
                                   is_async=True)
            mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
            acc_tok = warpgroup_mma(pa, v_smem.index(2 * sp).permute((1, 0)), acc, is_async=True)
            acc_tok = warpgroup_mma(pb, v_smem.index(2 * sp + 1).permute((1, 0)), acc_tok, is_async=True)
            ks_a = gl.load(ks_row + gl.load(kept + first))
            ks_b = gl.load(ks_row + gl.load(kept + gl.minimum(first + 1, last)))
            real_a, real_b = _step_mask(kept, lo, last, j, L, BLOCK_N, col_s)
            sa, sb = warpgroup_mma_wait(2, deps=[sa_tok, sb_tok])
            mbarrier.arrive(k_empty.index(s), count=1)
            pa_next, pb_next, m_i, l_i, alpha = _softmax8(sa, sb, m_i, l_i, c_row, ks_a, ks_b, real_a, real_b,
                                                          mask_last and j == n_steps - 1, p_layout)
            acc = warpgroup_mma_wait(0, deps=[acc_tok])  # 8-bit operands cannot be deps (Triton 3.6)
            mbarrier.arrive(v_empty.index(sp), count=1)
            acc = acc * gl.convert_layout(alpha, row_o)[:, None]
            pa = pa_next
            pb = pb_next
        sp = (n_steps - 1) % STAGES
        mbarrier.wait(v_ready.index(sp), ((n_steps - 1) // STAGES) & 1)
        acc = warpgroup_mma(pa, v_smem.index(2 * sp).permute((1, 0)), acc)
        acc = warpgroup_mma(pb, v_smem.index(2 * sp + 1).permute((1, 0)), acc)
        mbarrier.arrive(v_empty.index(sp), count=1)

        _store8(acc, m_i, l_i, kvw_smem, kvw_bar, Q16, O, KSUM, BIAS, VS, stride_qb, stride_ql, stride_qh,
                stride_ob, stride_ol, stride_oh, stride_ksum, L, b, h, pid_m, pid_bh, eps_over_len,
                D, BLOCK_M, WITH_LINEAR, ROWS, CID)

    @gluon.jit
    def _sla_attention_8bit_kernel(
        q_desc, k_desc, vt_desc, kvw_desc, KEPT, Q16, O, KSUM, BIAS, QS, KS, VS,
        stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh, stride_ksum,
        L, H, n_keep, n_kblocks, qk_scale, eps_over_len, programs_per_head,
        D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
        WITH_LINEAR: gl.constexpr, CONSUMER_REGS: gl.constexpr,
    ):
        """Grid (H * q-blocks, B): one program per q-block. Partitions: TMA producer (default), 2 consumers."""
        ROWS: gl.constexpr = BLOCK_M // 2
        q_smem = gl.allocate_shared_memory(gl.int8, [BLOCK_M, D], q_desc.layout)
        k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, 2 * BLOCK_N, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(gl.float8e4nv, [2 * STAGES, D, BLOCK_N], vt_desc.layout)
        kvw_smem = gl.allocate_shared_memory(gl.bfloat16, [D, D], kvw_desc.layout)
        q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty = _barriers(STAGES)
        gl.warp_specialize(
            [(_producer8, (q_desc, k_desc, vt_desc, kvw_desc, q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar,
                           k_ready, k_empty, v_ready, v_empty, KEPT, L, H, n_keep, programs_per_head,
                           D, BLOCK_M, BLOCK_N, STAGES, WITH_LINEAR)),
             (_consumer8, (q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                           KEPT, Q16, O, KSUM, BIAS, QS, KS, VS,
                           stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh, stride_ksum,
                           L, H, n_keep, n_kblocks, qk_scale, eps_over_len, programs_per_head,
                           D, BLOCK_M, BLOCK_N, STAGES, WITH_LINEAR, ROWS, 0)),
             (_consumer8, (q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                           KEPT, Q16, O, KSUM, BIAS, QS, KS, VS,
                           stride_qb, stride_ql, stride_qh, stride_ob, stride_ol, stride_oh, stride_ksum,
                           L, H, n_keep, n_kblocks, qk_scale, eps_over_len, programs_per_head,
                           D, BLOCK_M, BLOCK_N, STAGES, WITH_LINEAR, ROWS, 1))],
            [4, 4], [CONSUMER_REGS, CONSUMER_REGS])


def kernel_arguments(q, quantized, kept, kvw, k_sum_mean, bias, out, block_q: int = 128, block_k: int = 64):
    """(grid, args, constexprs) of one launch: also what bench/experiments/offline_gluon.py compiles."""
    q8, q_scale, k8, k_scale, vt8, v_scale = quantized
    B, L, H, D = q.shape
    cfg = SLA_8BIT
    with_linear = kvw is not None
    rows2d = lambda x: x.as_strided((B * L, H * D), (x.stride(1), 1))  # noqa: E731
    vt2d = vt8.view(B * H * D, vt8.shape[-1])  # its whole padded width: the zero keys sit among a block's slots
    kvw2d = (kvw if with_linear else q.new_zeros(B, H, D, D)).reshape(-1, D)
    args = dict(q_desc=descriptor(rows2d(q8), [block_q, D]), k_desc=descriptor(rows2d(k8), [block_k, D]),
                vt_desc=descriptor(vt2d, [D, block_k]), kvw_desc=descriptor(kvw2d, [D, D]), KEPT=kept, Q16=q,
                O=out, KSUM=k_sum_mean if with_linear else out, BIAS=bias if with_linear else out, QS=q_scale,
                KS=k_scale, VS=v_scale, stride_qb=q.stride(0), stride_ql=q.stride(1), stride_qh=q.stride(2),
                stride_ob=out.stride(0), stride_ol=out.stride(1), stride_oh=out.stride(2),
                stride_ksum=k_sum_mean.stride(1) if with_linear else 0, L=L, H=H, n_keep=kept.shape[-1],
                n_kblocks=k_scale.shape[-1], qk_scale=sla.LOG2E / math.sqrt(D), eps_over_len=sla.LINEAR_EPS / L,
                programs_per_head=-(-L // block_q))
    consts = dict(D=D, BLOCK_M=block_q, BLOCK_N=block_k, STAGES=cfg["stages"], WITH_LINEAR=with_linear,
                  CONSUMER_REGS=cfg["consumer_regs"])
    return (H * -(-L // block_q), B), args, consts


def sla_sparse_attention_8bit(q, quantized, kept, kvw=None, k_sum_mean=None, bias=None, block_q: int = 128,
                              block_k: int = 64) -> torch.Tensor:
    """`sla.sla_sparse_attention` (one launch, sm_90) from `quantize_sla_8bit_reference`'s tensors; q is the
    16-bit (B, L, H, D) query, read only by the linear branch."""
    if gluon is None or (q.shape[-1], block_q, block_k) != (128, 128, 64):
        raise ValueError("the 8-bit SLA kernel needs Triton with Gluon, head dim 128 and 128/64-token blocks")
    out = torch.empty_like(q)
    if kvw is not None and (k_sum_mean.stride(0) != q.shape[2] * k_sum_mean.stride(1) or k_sum_mean.stride(2) != 1):
        k_sum_mean = k_sum_mean.contiguous()
    grid, args, consts = kernel_arguments(q, quantized, kept, kvw, k_sum_mean, bias, out, block_q, block_k)
    _sla_attention_8bit_kernel[grid](**args, **consts, num_warps=SLA_8BIT["num_warps"], enable_fp_fusion=True)
    return out
