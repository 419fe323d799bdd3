"""SLA's fused block-sparse kernel for Hopper, warp-specialized in Gluon (Triton's explicit-layout dialect).

Why: the Triton kernel (`kernels/sla.py`) runs both warpgroups of a program in lock-step (the shared-memory
handoff of its pointer loads puts a CTA-wide barrier in every step), so one warpgroup's softmax cannot fill the
other's MMA gaps, and all 256 threads spend issue slots on load addresses. Here a producer partition streams the
kept K/V blocks with TMA into two rings of shared-memory stages (keys, values) guarded by mbarriers, and two
consumer partitions (one warpgroup each, 64 of the q-block's 128 rows) run the flash-attention steps on their own
schedule, as FA3 does on Hopper, each overlapping one step's softmax with the previous step's P V.

Same math and the same program numbering as `_sla_attention_kernel` (so the wave-tail split and its merge kernel
are shared): a program owns one 128-row q-block of one (b, h), or one piece of it (PIECES > 1); each step attends
to two kept k-blocks (128 keys: one QK^T MMA of N = 128 and one PV MMA of K = 128); only the last step can hold a
ragged k-block or a missing second block (odd counts), and only it masks. The linear branch runs in the epilogue
from the q tile already in shared memory. Deterministic: fixed launch, no atomics, every reduction in a fixed order.
"""
from __future__ import annotations

import torch

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, warpgroup_mma, warpgroup_mma_wait

    from kernels.gluon_tma import descriptor
    from kernels.gluon_tma import tma_load as _tma_load
except ImportError:  # pragma: no cover - Triton without Gluon (older than 3.5): the Triton kernel runs instead
    gluon = None

LOG2E = 1.4426950408889634
# 2 stages of 128 keys (64 KB each) + the q tile (32 KB) + the linear branch's D x D matrix (32 KB): 192 KB, so one
# program per SM, as for the Triton kernel. Registers: 240 per consumer thread (accumulator 64 + logits 64 + P 32),
# the producer's warps get what is left (setmaxnreg). overlap: FA3's intra-warpgroup overlap (see `_consumer`); on
# an H100 the kernel alone went 1.352 -> 1.190 ms at 1.3B 480p, the forward 153.2 -> 150.4 ms: the forward runs at
# the 700 W power cap, so the denser kernel runs at a lower clock (bench/experiments/clocks_under_load.py).
GLUON_ATTENTION = dict(stages=2, consumer_regs=240, num_warps=4, overlap=True)
# Measured and dropped (H100, bench/experiments/gluon_ab.py, session 12): FA3's ping-pong order between the two
# consumers (P V_j and Q K_{j+1}^T issued together, asynchronously, in strict turns passed by an mbarrier pair) gave
# the same bits but a slower kernel, 1.395 vs 1.339 ms at 1.3B 480p (commit 5281be2 has the code). Session 14: a
# persistent kernel (one program per SM taking units p, p + G, ...; two q buffers so the next unit's q tile loads
# under this unit's last steps; 224 KB of shared memory): same bits, 1.270 vs 1.264 ms at 1.3B, 22.67 vs 20.63 ms
# at 14B 720p; and the linear branch's two vectors loaded before the steps instead of in the epilogue: no change
# (commit a309371 has both). A program's fixed cost is ~5-6 us against ~1.7 us a step
# (bench/experiments/sla_step_cost.py), and what a persistent kernel can hide of it (launch, the q tile's load) is
# the small part.


def gluon_available() -> bool:
    return gluon is not None


if gluon is not None:
    _LOG2E = gl.constexpr(LOG2E)

    @gluon.jit
    def _unit_of_program(programs_per_head, unit0, PIECES: gl.constexpr):
        """(b, h, q-block) of this program, numbered as in `_sla_attention_kernel`."""
        b = gl.program_id(1)
        unit = unit0 + gl.program_id(0) // PIECES
        return b, unit // programs_per_head, unit % programs_per_head

    @gluon.jit
    def _kept_range(n_keep, chunk, PIECES: gl.constexpr):
        """[lo, hi) of the kept list this program attends to, and its number of 2-block steps."""
        if PIECES == 1:
            lo = 0
            hi = n_keep
        else:  # chunk is even, so a step's two blocks never straddle two pieces
            lo = (gl.program_id(0) % PIECES) * chunk
            hi = gl.minimum(lo + chunk, n_keep)
        return lo, hi, (hi - lo + 1) // 2

    @gluon.jit
    def _producer(q_desc, k_desc, v_desc, kvw_desc, q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar,
                  k_ready, k_empty, v_ready, v_empty, KEPT, L, H, n_keep, programs_per_head, unit0, chunk,
                  D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  PIECES: gl.constexpr, WITH_LINEAR: gl.constexpr):
        """TMA loads: the q tile, the linear branch's matrix, then both k-blocks of every step into the K ring and
        their values into the V ring. Two rings with their own barriers, because the overlapped consumer is done
        with a step's keys one step before it is done with its values."""
        b, h, pid_m = _unit_of_program(programs_per_head, unit0, PIECES)
        mbarrier.expect(q_bar, BLOCK_M * D * 2)
        _tma_load(q_desc, [b * L + pid_m * BLOCK_M, h * D], q_bar, q_smem)
        if WITH_LINEAR and PIECES == 1:
            mbarrier.expect(kvw_bar, D * D * 2)
            _tma_load(kvw_desc, [(b * H + h) * D, 0], kvw_bar, kvw_smem)
        kept = KEPT + ((b * H + h).to(gl.int64) * programs_per_head + pid_m) * n_keep
        lo, hi, n_steps = _kept_range(n_keep, chunk, PIECES)
        row0 = b * L
        col0 = h * D
        for j in range(n_steps):
            s = j % STAGES
            phase = ((j // STAGES) & 1) ^ 1  # a fresh barrier passes parity 1 at once
            first = lo + 2 * j
            start_a = gl.load(kept + first) * BLOCK_N
            # an odd count's last step loads its block twice; the consumers mask the copy
            start_b = gl.load(kept + gl.minimum(first + 1, hi - 1)) * BLOCK_N
            mbarrier.wait(k_empty.index(s), phase)
            bar = k_ready.index(s)
            mbarrier.expect(bar, 2 * BLOCK_N * D * 2)
            _tma_load(k_desc, [row0 + start_a, col0], bar, k_smem.index(s).slice(0, BLOCK_N))
            _tma_load(k_desc, [row0 + start_b, col0], bar, k_smem.index(s).slice(BLOCK_N, BLOCK_N))
            mbarrier.wait(v_empty.index(s), phase)
            bar = v_ready.index(s)
            mbarrier.expect(bar, 2 * BLOCK_N * D * 2)
            _tma_load(v_desc, [row0 + start_a, col0], bar, v_smem.index(s).slice(0, BLOCK_N))
            _tma_load(v_desc, [row0 + start_b, col0], bar, v_smem.index(s).slice(BLOCK_N, BLOCK_N))

    @gluon.jit
    def _mask_last_step(qk, kept, lo, last, j, L, BLOCK_N: gl.constexpr, KEYS: gl.constexpr, col_s: gl.constexpr):
        """-inf for the ragged final k-block's keys past L and for an odd count's duplicated block."""
        first = lo + 2 * j
        cols = gl.arange(0, KEYS, layout=col_s)
        start_a = gl.load(kept + first) * BLOCK_N
        start_b = gl.load(kept + gl.minimum(first + 1, last)) * BLOCK_N
        pos = gl.where(cols < BLOCK_N, start_a + cols, start_b + cols - BLOCK_N)
        real = (pos < L) & ((cols < BLOCK_N) | (first + 1 <= last))
        return gl.where(real[None, :], qk, float("-inf"))

    @gluon.jit
    def _online_softmax(qk, m_i, l_i, qk_scale):
        """One step of the online softmax on raw logits: (p, new row max in base-2 units, new row sum, the
        accumulator's rescale factor)."""
        m_ij = gl.maximum(m_i, gl.max(qk, axis=1) * qk_scale)
        p = gl.exp2(qk * qk_scale - m_ij[:, None])
        alpha = gl.exp2(m_i - m_ij)
        return p, m_ij, l_i * alpha + gl.sum(p, axis=1), alpha

    @gluon.jit
    def _finish(acc, m_i, l_i, qf, kvw_smem, kvw_bar, O, KSUM, BIAS, PART_O, PART_LSE,
                stride_ob, stride_ol, stride_oh, stride_ksum, L, b, h, pid_m, pid_bh, eps_over_len,
                D: gl.constexpr, BLOCK_M: gl.constexpr, PIECES: gl.constexpr, WITH_LINEAR: gl.constexpr,
                ROWS: gl.constexpr, CID: gl.constexpr):
        """Normalize, then store a piece's partial and log-sum-exp, or add the linear branch and store the rows.
        qf: the rows' q in float32 (o's layout) for the linear branch; read only when it runs (PIECES == 1)."""
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        col_o: gl.constexpr = gl.SliceLayout(0, o_layout)
        dtype: gl.constexpr = kvw_smem.dtype
        # one reciprocal a row, then multiplies, instead of 128 divides a thread: the same bits (div.full is itself a
        # reciprocal and a multiply), fewer instructions (bench/experiments/sla_kernel_rev_ab.py: time within noise)
        acc = acc * gl.convert_layout(1.0 / l_i, row_o)[:, None]
        rows = pid_m * BLOCK_M + CID * ROWS + gl.arange(0, ROWS, layout=row_o)
        offs_d = gl.arange(0, D, layout=col_o)
        if PIECES > 1:  # every row of a piece saw at least one real key, so l_i >= 1
            slot = ((b * gl.num_programs(0) + gl.program_id(0)).to(gl.int64) * BLOCK_M + CID * ROWS
                    + gl.arange(0, ROWS, layout=row_o))
            gl.store(PART_O + slot[:, None] * D + offs_d[None, :], acc)
            lse = gl.convert_layout(m_i + gl.log2(l_i), row_o)
            gl.store(PART_LSE + slot, lse)
        else:
            if WITH_LINEAR:  # o_l = [(phi(q) * s) / (phi(q) . s + eps / L)] @ KVW + bias, see the Triton kernel
                e = gl.exp2((qf - gl.max(qf, axis=1)[:, None]) * _LOG2E)
                w = e * gl.load(KSUM + pid_bh.to(gl.int64) * stride_ksum + offs_d)[None, :]
                denom = gl.sum(w, axis=1) + eps_over_len * gl.sum(e, axis=1)
                mbarrier.wait(kvw_bar, 0)
                acc = warpgroup_mma(gl.convert_layout((w * (1.0 / denom)[:, None]).to(dtype), a_layout), kvw_smem, acc)
                acc = acc + gl.load(BIAS + offs_d)[None, :]
            o_ptrs = (O + b.to(gl.int64) * stride_ob + h * stride_oh + rows[:, None].to(gl.int64) * stride_ol
                      + offs_d[None, :])
            gl.store(o_ptrs, acc.to(dtype), mask=(rows < L)[:, None])

    @gluon.jit
    def _consumer(q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                  KEPT, O, KSUM, BIAS, PART_O, PART_LSE,
                  stride_ob, stride_ol, stride_oh, stride_ksum,
                  L, H, n_keep, qk_scale, eps_over_len, programs_per_head, unit0, chunk,
                  D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  PIECES: gl.constexpr, WITH_LINEAR: gl.constexpr, ROWS: gl.constexpr, CID: gl.constexpr,
                  OVERLAP: gl.constexpr):
        """One warpgroup's ROWS rows: online softmax over the kept blocks, then the linear branch and the store.

        OVERLAP (FA3's intra-warpgroup overlap): step j's QK^T and step j-1's P V are issued together,
        asynchronously, and step j's softmax runs while P V_{j-1} is still on the tensor cores; only then is the
        accumulator rescaled. The same MMAs on the same operands and the same softmax arithmetic in the same order
        as the plain schedule (acc_j = acc_{j-1} * alpha_j + P_j V_j), so the same bits."""
        KEYS: gl.constexpr = 2 * BLOCK_N
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, KEYS, 16])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                           instr_shape=[16, D, 16])
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
        row_s: gl.constexpr = gl.SliceLayout(1, s_layout)
        col_s: gl.constexpr = gl.SliceLayout(0, s_layout)
        row_o: gl.constexpr = gl.SliceLayout(1, o_layout)
        dtype: gl.constexpr = q_smem.dtype

        b, h, pid_m = _unit_of_program(programs_per_head, unit0, PIECES)
        pid_bh = b * H + h
        kept = KEPT + (pid_bh.to(gl.int64) * programs_per_head + pid_m) * n_keep
        lo, hi, n_steps = _kept_range(n_keep, chunk, PIECES)
        q_rows = q_smem.slice(CID * ROWS, ROWS)

        m_i = gl.full([ROWS], float("-inf"), gl.float32, layout=row_s)
        l_i = gl.full([ROWS], 0.0, gl.float32, layout=row_s)
        acc = gl.zeros([ROWS, D], gl.float32, layout=o_layout)
        zero_s = gl.zeros([ROWS, KEYS], gl.float32, layout=s_layout)
        mbarrier.wait(q_bar, 0)
        # only the last step can hold the ragged final k-block (the list is sorted) or an odd count's copy
        last = hi - 1
        last_ragged = (gl.load(kept + last) * BLOCK_N + BLOCK_N > L) & (hi == n_keep)
        mask_last = last_ragged | ((hi - lo) % 2 == 1)
        if OVERLAP:
            # step 0: its logits and softmax; its P V waits for step 1's QK^T
            mbarrier.wait(k_ready.index(0), 0)
            qk = warpgroup_mma(q_rows, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False)
            mbarrier.arrive(k_empty.index(0), count=1)
            if mask_last and n_steps == 1:
                qk = _mask_last_step(qk, kept, lo, last, 0, L, BLOCK_N, KEYS, col_s)
            m_i = gl.max(qk, axis=1) * qk_scale
            p = gl.exp2(qk * qk_scale - m_i[:, None])
            l_i = gl.sum(p, axis=1)
            p_op = gl.convert_layout(p.to(dtype), a_layout)
            for j in range(1, n_steps):
                s = j % STAGES
                sp = (j - 1) % STAGES
                mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
                qk_tok = warpgroup_mma(q_rows, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False,
                                       is_async=True)
                mbarrier.wait(v_ready.index(sp), ((j - 1) // STAGES) & 1)
                acc_tok = warpgroup_mma(p_op, v_smem.index(sp), acc, is_async=True)
                qk = warpgroup_mma_wait(1, deps=[qk_tok])
                mbarrier.arrive(k_empty.index(s), count=1)
                if mask_last and j == n_steps - 1:
                    qk = _mask_last_step(qk, kept, lo, last, j, L, BLOCK_N, KEYS, col_s)
                p, m_ij, l_i, alpha = _online_softmax(qk, m_i, l_i, qk_scale)
                acc, p_op = warpgroup_mma_wait(0, deps=[acc_tok, p_op])
                mbarrier.arrive(v_empty.index(sp), count=1)
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                p_op = gl.convert_layout(p.to(dtype), a_layout)
                m_i = m_ij
            sp = (n_steps - 1) % STAGES
            mbarrier.wait(v_ready.index(sp), ((n_steps - 1) // STAGES) & 1)
            acc = warpgroup_mma(p_op, v_smem.index(sp), acc)
            mbarrier.arrive(v_empty.index(sp), count=1)
        else:
            for j in range(n_steps):
                s = j % STAGES
                mbarrier.wait(k_ready.index(s), (j // STAGES) & 1)
                qk = warpgroup_mma(q_rows, k_smem.index(s).permute((1, 0)), zero_s, use_acc=False)
                mbarrier.arrive(k_empty.index(s), count=1)
                if mask_last and j == n_steps - 1:
                    qk = _mask_last_step(qk, kept, lo, last, j, L, BLOCK_N, KEYS, col_s)
                p, m_ij, l_i, alpha = _online_softmax(qk, m_i, l_i, qk_scale)
                acc = acc * gl.convert_layout(alpha, row_o)[:, None]
                mbarrier.wait(v_ready.index(s), (j // STAGES) & 1)
                acc = warpgroup_mma(gl.convert_layout(p.to(dtype), a_layout), v_smem.index(s), acc)
                mbarrier.arrive(v_empty.index(s), count=1)
                m_i = m_ij

        if WITH_LINEAR and PIECES == 1:
            qf = q_rows.load(o_layout).to(gl.float32)
        else:
            qf = acc  # not read
        _finish(acc, m_i, l_i, qf, kvw_smem, kvw_bar, O, KSUM, BIAS, PART_O, PART_LSE,
                stride_ob, stride_ol, stride_oh, stride_ksum, L, b, h, pid_m, pid_bh, eps_over_len,
                D, BLOCK_M, PIECES, WITH_LINEAR, ROWS, CID)

    @gluon.jit
    def _barriers(STAGES: gl.constexpr):
        """The q tile's and the linear matrix's barriers, and ready/empty barriers of the K and V rings, initialised
        (an empty stage waits for both consumer warpgroups)."""
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        kvw_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        k_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        mbarrier.init(kvw_bar, count=1)
        for i in gl.static_range(STAGES):
            mbarrier.init(k_ready.index(i), count=1)
            mbarrier.init(v_ready.index(i), count=1)
            mbarrier.init(k_empty.index(i), count=2)
            mbarrier.init(v_empty.index(i), count=2)
        return q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty

    @gluon.jit
    def _sla_attention_gluon_kernel(
        q_desc, k_desc, v_desc, kvw_desc, KEPT, O, KSUM, BIAS, PART_O, PART_LSE,
        stride_ob, stride_ol, stride_oh, stride_ksum,
        L, H, n_keep, qk_scale, eps_over_len, programs_per_head, unit0, chunk,
        D: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
        PIECES: gl.constexpr, WITH_LINEAR: gl.constexpr, CONSUMER_REGS: gl.constexpr, OVERLAP: gl.constexpr,
    ):
        """Grid (units or pieces, B), as `_sla_attention_kernel`. Partitions: TMA producer (default), 2 consumers."""
        dtype: gl.constexpr = q_desc.dtype
        ROWS: gl.constexpr = BLOCK_M // 2
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D], q_desc.layout)
        k_smem = gl.allocate_shared_memory(dtype, [STAGES, 2 * BLOCK_N, D], k_desc.layout)
        v_smem = gl.allocate_shared_memory(dtype, [STAGES, 2 * BLOCK_N, D], v_desc.layout)
        kvw_smem = gl.allocate_shared_memory(dtype, [D, D], kvw_desc.layout)
        q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty = _barriers(STAGES)
        gl.warp_specialize(
            [(_producer, (q_desc, k_desc, v_desc, kvw_desc, q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar,
                          k_ready, k_empty, v_ready, v_empty, KEPT, L, H, n_keep, programs_per_head, unit0, chunk,
                          D, BLOCK_M, BLOCK_N, STAGES, PIECES, WITH_LINEAR)),
             (_consumer, (q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                          KEPT, O, KSUM, BIAS, PART_O, PART_LSE, stride_ob, stride_ol, stride_oh, stride_ksum,
                          L, H, n_keep, qk_scale, eps_over_len, programs_per_head, unit0, chunk,
                          D, BLOCK_M, BLOCK_N, STAGES, PIECES, WITH_LINEAR, ROWS, 0, OVERLAP)),
             (_consumer, (q_smem, k_smem, v_smem, kvw_smem, q_bar, kvw_bar, k_ready, k_empty, v_ready, v_empty,
                          KEPT, O, KSUM, BIAS, PART_O, PART_LSE, stride_ob, stride_ol, stride_oh, stride_ksum,
                          L, H, n_keep, qk_scale, eps_over_len, programs_per_head, unit0, chunk,
                          D, BLOCK_M, BLOCK_N, STAGES, PIECES, WITH_LINEAR, ROWS, 1, OVERLAP))],
            [4, 4], [CONSUMER_REGS, CONSUMER_REGS])


def gluon_layout_ok(q, k, v, kvw, block_q: int, block_k: int) -> bool:
    """What this kernel handles: 16-bit (B, L, H, D) tensors viewable as (B*L, H*D) rows for TMA, D = 128 (the
    Wan heads; the MMA shapes are fixed for it), 128-token q-blocks of 64-token k-blocks."""
    B, L, H, D = q.shape
    if gluon is None or q.dtype not in (torch.bfloat16, torch.float16) or (D, block_q, block_k) != (128, 128, 64):
        return False
    for x in (q, k, v):
        sb, sl, sh, sd = x.stride()
        if sd != 1 or sh != D or x.data_ptr() % 16 or (sl * x.element_size()) % 16 or (B > 1 and sb != L * sl):
            return False
    return kvw is None or (kvw.dtype == q.dtype and kvw.is_contiguous())


def launch_gluon_attention(q, k, v, kept, kvw, k_sum_mean, bias, out, part_o, part_lse, programs_per_head,
                           block_q, block_k, with_linear, qk_scale, eps_over_len, launches):
    """The fused kernel's launches (`launches`: (programs, first unit, pieces, chunk) each), through Gluon."""
    B, L, H, D = q.shape
    cfg = GLUON_ATTENTION

    def rows_view(x, block_rows):
        return descriptor(x.as_strided((B * L, H * D), (x.stride(1), 1)), [block_rows, D])

    q_desc, k_desc, v_desc = rows_view(q, block_q), rows_view(k, block_k), rows_view(v, block_k)
    kvw_flat = (kvw if with_linear else q.new_zeros(D, D)).reshape(-1, D)
    kvw_desc = descriptor(kvw_flat, [D, D])
    for n_programs, unit0, pieces, chunk in launches:
        _sla_attention_gluon_kernel[(n_programs, B)](
            q_desc, k_desc, v_desc, kvw_desc, kept, out, k_sum_mean, bias, part_o, part_lse,
            out.stride(0), out.stride(1), out.stride(2), k_sum_mean.stride(1),
            L, H, kept.shape[-1], qk_scale, eps_over_len, programs_per_head, unit0, chunk,
            D=D, BLOCK_M=block_q, BLOCK_N=block_k, STAGES=cfg["stages"], PIECES=pieces, WITH_LINEAR=with_linear,
            CONSUMER_REGS=cfg["consumer_regs"], OVERLAP=cfg["overlap"], num_warps=cfg["num_warps"],
            enable_fp_fusion=True,
        )
