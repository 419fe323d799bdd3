"""The epilogue-fused GEMMs of `kernels/fp8_gemm.py` as a ping-pong warp-specialized Gluon kernel for Hopper.

Why: the Triton kernel runs a tile's epilogue (GELU + fp8 quantization, or the gated residual add) with the tensor
cores idle: at the 1.3B FFN up projection the GEMM alone takes 0.67 ms (cuBLAS) and the fused one 0.97 ms, the
difference being ~4 us of epilogue per 128 x 256 tile. Here, as in CUTLASS's "ping-pong" schedule, two consumer
warpgroups own alternate output tiles of the program: while one runs its tile's MMAs, the other runs its epilogue,
so the epilogue costs nothing as long as it is shorter than a mainloop. A producer partition streams A and B
K-slices with TMA into one ring of shared-memory stages guarded by mbarriers; the consumers take their mainloops
in strict turns (an mbarrier pair passes the turn), which keeps the tensor cores fed by one warpgroup at a time
and lets both consumers read the ring in the order it is filled.

Same numerics as `_gemm_kernel` (the references in `kernels/fp8_gemm.py` are the specification): the same K
slices through the same wgmma instructions in the same order, the same epilogue arithmetic, except that the FFN's
GELU uses the hardware tanh by default (`GELU_MODES`: ~0.03% of the hidden's fp8 codes move by one step, the
hidden's error is unchanged, the 1.3B up projection takes 0.844 instead of 0.936 ms on an H100). Deterministic: a
fixed tile order, no atomics, no split-K; a tile's bits depend on neither the tile shape nor the SM count.
"""
from __future__ import annotations

import torch

from kernels.fp8_linear import FP8_DTYPE, GELU_EXP2_C1, GELU_EXP2_C2, GELU_EXP2_CLAMP

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import (
        fence_async_shared,
        mbarrier,
        tma,
        warpgroup_mma,
        warpgroup_mma_wait,
    )

    from kernels.gluon_tma import descriptor
    from kernels.gluon_tma import tma_load as _tma_load
    from kernels.gluon_tma import tma_store as _tma_store
except ImportError:  # pragma: no cover - Triton without Gluon: the Triton kernel runs instead
    gluon = None

# 128 x 128 output tile per consumer (accumulator: 128 fp32 registers a thread), K slices of 128 fp8 / 64 bf16
# (32 KB a stage), 4 stages (128 KB) + one 128 x 128 output tile per consumer (64 KB in bf16): one program per SM.
# Registers (`fp8_gemm_ab.py --gluon-sweep`, H100, 1.3B): 224 a consumer thread; 232 made the plain store 40% slower
# (0.179 vs 0.128 ms) and the fused epilogues ~1% slower; 3 stages lose 5-25%, 5 stages nothing.
# gelu: how the FFN epilogue computes GELU(tanh), one of GELU_MODES:
#   exp2_div     x / (1 + 2^t) with a full-range divide: the Triton kernel's math and bits (two MUFU ops; with an
#                explicit rcp.approx instead of the divide: the same bits and time, bench/HISTORY.md session 14)
#   tanh_approx  0.5 x (1 + tanh(u)) with PTX's tanh.approx.f32 (one MUFU op). For x << 0 it cancels (tanh.approx's
#                ~2^-11 absolute error against 1 + tanh(u) ~ 0), but those values sit far below the per-token fp8
#                scale: the hidden's relative error stays 2.670e-2 at 1.3B, 2.680e-2 at 14B, as with exp2_div.
# H100, bench/experiments/gluon_epilogue_ab.py, FFN up GEMM + GELU + fp8 quantization at 1.3B: exp2_div 0.936 ms,
# tanh_approx 0.844 (a plain bf16 store 0.802, cuBLAS alone 0.733); at 14B the epilogue hides under
# the longer mainloop either way (8.18-8.36 ms, noise).
GLUON_GEMM = dict(BLOCK_M=128, BLOCK_N=128, STAGES=4, GROUP_M=8, consumer_regs=224, num_warps=4, gelu="tanh_approx")
GELU_MODES = {"exp2_div": 0, "tanh_approx": 1}


if gluon is not None:
    from kernels.tiles import grouped_tile

    _GELU_C1 = gl.constexpr(GELU_EXP2_C1)
    _GELU_C2 = gl.constexpr(GELU_EXP2_C2)
    _EXP2_CLAMP = gl.constexpr(GELU_EXP2_CLAMP)
    _GELU_K1 = gl.constexpr(0.7978845608028654)  # sqrt(2 / pi)
    _GELU_K3 = gl.constexpr(0.7978845608028654 * 0.044715)

    @gluon.jit
    def _producer(a_desc, b_desc, a_smem, b_smem, ready, empty, M, N, K,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
                  STAGES: gl.constexpr):
        """TMA loads of every K slice of every tile of this program, in tile order, into the ring."""
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        step = 0
        for tile_id in range(gl.program_id(0), num_pid_m * num_pid_n, gl.num_programs(0)):
            pid_m, pid_n = grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
            for ki in range(k_tiles):
                s = step % STAGES
                mbarrier.wait(empty.index(s), ((step // STAGES) & 1) ^ 1)  # a fresh barrier passes parity 1
                bar = ready.index(s)
                mbarrier.expect(bar, a_desc.block_type.nbytes + b_desc.block_type.nbytes)
                _tma_load(a_desc, [pid_m * BLOCK_M, ki * BLOCK_K], bar, a_smem.index(s))
                _tma_load(b_desc, [pid_n * BLOCK_N, ki * BLOCK_K], bar, b_smem.index(s))
                step += 1

    @gluon.jit
    def _gelu_tanh(x, MODE: gl.constexpr):
        """GELU(tanh) of fp32 x rounded to bf16 (GELU_MODES). Mode 0 is `kernels.fp8_linear._gelu_tanh` on the GPU:
        x / (1 + 2^(x (C1 + C2 x^2)))."""
        if MODE == 1:  # PTX's tanh.approx.f32: one MUFU instruction
            u = x * (_GELU_K1 + _GELU_K3 * (x * x))
            hx = 0.5 * x
            g = hx + hx * gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [u], dtype=gl.float32,
                                                    is_pure=True, pack=1)
        else:
            t = x * (_GELU_C1 + _GELU_C2 * (x * x))
            t = gl.minimum(gl.maximum(t, -_EXP2_CLAMP), _EXP2_CLAMP)
            g = gl.fdiv(x, 1.0 + gl.exp2(t))
        return g.to(gl.bfloat16).to(gl.float32)

    @gluon.jit
    def _consumer(a_smem, b_smem, c_smem, ready, empty, turn, res_bar, out_desc, res_desc,
                  a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr, M, N, K, L,
                  BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BLOCK_K: gl.constexpr, GROUP_M: gl.constexpr,
                  STAGES: gl.constexpr, A_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr, EPILOGUE: gl.constexpr,
                  HAS_GATE: gl.constexpr, GELU_MODE: gl.constexpr, CID: gl.constexpr):
        """Tiles CID, CID + 2, ... of this program: the mainloop in its turn, then the epilogue out of turn."""
        INSTR_K: gl.constexpr = 32 if A_SCALE == 1 else 16
        acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                             instr_shape=[16, BLOCK_N, INSTR_K])
        row_l: gl.constexpr = gl.SliceLayout(1, acc_layout)
        col_l: gl.constexpr = gl.SliceLayout(0, acc_layout)
        num_pid_m = gl.cdiv(M, BLOCK_M)
        num_pid_n = gl.cdiv(N, BLOCK_N)
        k_tiles = gl.cdiv(K, BLOCK_K)
        programs = gl.num_programs(0)
        n = 0  # this consumer's tile count
        for tile_id in range(gl.program_id(0) + CID * programs, num_pid_m * num_pid_n, 2 * programs):
            pid_m, pid_n = grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            if EPILOGUE == 2:  # fetch the residual tile under the mainloop, once the last store has left c_smem
                tma.store_wait(0)
                mbarrier.expect(res_bar, res_desc.block_type.nbytes)
                _tma_load(res_desc, [off_m, off_n], res_bar, c_smem)
            # wait for the turn: consumer 0's first tile goes at once (a fresh barrier passes parity 1)
            mbarrier.wait(turn.index(CID), (n & 1) ^ (1 - CID))
            step = (2 * n + CID) * k_tiles
            acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, layout=acc_layout)
            for ki in range(k_tiles):
                s = step % STAGES
                mbarrier.wait(ready.index(s), (step // STAGES) & 1)
                acc = warpgroup_mma(a_smem.index(s), b_smem.index(s).permute((1, 0)), acc, is_async=True)
                acc = warpgroup_mma_wait(1, deps=[acc])  # the previous slice's MMA is done: release its stage
                if ki > 0:
                    mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)
                step += 1
            mbarrier.arrive(turn.index(1 - CID), count=1)  # the other consumer's MMAs queue behind ours
            acc = warpgroup_mma_wait(0, deps=[acc])
            mbarrier.arrive(empty.index((step + STAGES - 1) % STAGES), count=1)

            rows = off_m + gl.arange(0, BLOCK_M, layout=row_l)
            cols = off_n + gl.arange(0, BLOCK_N, layout=col_l)
            rmask = rows < M
            cmask = cols < N
            if A_SCALE == 1:
                acc = acc * gl.load(a_scale_ptr + rows, mask=rmask, other=0.0)[:, None]
                acc = acc * gl.load(b_scale_ptr + cols, mask=cmask, other=0.0)[None, :]
            if HAS_BIAS:
                acc = acc + gl.load(bias_ptr + cols, mask=cmask, other=0.0).to(gl.float32)[None, :]
            y = acc.to(gl.bfloat16)
            if EPILOGUE == 0:
                tma.store_wait(0)
                c_smem.store(y)
            elif EPILOGUE == 1:  # per-token scales known before the GEMM (`ffn_hidden_scales`)
                h = _gelu_tanh(y.to(gl.float32), GELU_MODE)
                inv = gl.div_rn(gl.full([BLOCK_M], 1.0, gl.float32, layout=row_l),
                                gl.load(qs_ptr + rows, mask=rmask, other=1.0))
                codes = (h * inv[:, None]).to(gl.float8e4nv)  # the cast saturates at +-448 (satfinite)
                tma.store_wait(0)
                c_smem.store(codes)
            else:
                mbarrier.wait(res_bar, n & 1)
                x = c_smem.load(acc_layout).to(gl.float32)
                if HAS_GATE:  # a tile never spans two batch items (`gluon_gemm_ok`)
                    g = gl.load(gate_ptr + (off_m // L) * N + cols, mask=cmask, other=0.0)
                    p = (y.to(gl.float32) * g.to(gl.float32)[None, :]).to(gl.bfloat16).to(gl.float32)
                else:
                    p = y.to(gl.float32)
                c_smem.store((x + p).to(gl.bfloat16))
            fence_async_shared()
            _tma_store(out_desc, [off_m, off_n], c_smem)
            n += 1
        tma.store_wait(0)

    @gluon.jit
    def _gemm_gluon_kernel(
        a_desc, b_desc, out_desc, res_desc, a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr,
        M, N, K, L,
        GROUP_M: gl.constexpr, STAGES: gl.constexpr, A_SCALE: gl.constexpr, HAS_BIAS: gl.constexpr,
        EPILOGUE: gl.constexpr, HAS_GATE: gl.constexpr, CONSUMER_REGS: gl.constexpr, GELU_MODE: gl.constexpr,
    ):
        """Persistent grid (one program per SM at most). Partitions: TMA producer (default), two consumers.
        EPILOGUE as in kernels/fp8_gemm.py: 0 store, 1 GELU + fp8 quantization, 2 (gated) residual."""
        BLOCK_M: gl.constexpr = a_desc.block_type.shape[0]
        BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
        BLOCK_N: gl.constexpr = b_desc.block_type.shape[0]
        a_smem = gl.allocate_shared_memory(a_desc.dtype, [STAGES, BLOCK_M, BLOCK_K], a_desc.layout)
        b_smem = gl.allocate_shared_memory(b_desc.dtype, [STAGES, BLOCK_N, BLOCK_K], b_desc.layout)
        c0_smem = gl.allocate_shared_memory(out_desc.dtype, [BLOCK_M, BLOCK_N], out_desc.layout)
        c1_smem = gl.allocate_shared_memory(out_desc.dtype, [BLOCK_M, BLOCK_N], out_desc.layout)
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        turn = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        res_bars = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(STAGES):
            mbarrier.init(ready.index(i), count=1)
            mbarrier.init(empty.index(i), count=1)
        for i in gl.static_range(2):
            mbarrier.init(turn.index(i), count=1)
            mbarrier.init(res_bars.index(i), count=1)
        gl.warp_specialize(
            [(_producer, (a_desc, b_desc, a_smem, b_smem, ready, empty, M, N, K,
                          BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES)),
             (_consumer, (a_smem, b_smem, c0_smem, ready, empty, turn, res_bars.index(0), out_desc, res_desc,
                          a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr, M, N, K, L,
                          BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES, A_SCALE, HAS_BIAS, EPILOGUE, HAS_GATE, GELU_MODE,
                          0)),
             (_consumer, (a_smem, b_smem, c1_smem, ready, empty, turn, res_bars.index(1), out_desc, res_desc,
                          a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr, M, N, K, L,
                          BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, STAGES, A_SCALE, HAS_BIAS, EPILOGUE, HAS_GATE, GELU_MODE,
                          1))],
            [4, 4], [CONSUMER_REGS, CONSUMER_REGS])


def gluon_gemm_ok(a: torch.Tensor, w: torch.Tensor, out: torch.Tensor, gate=None, L: int = 1, config=None) -> bool:
    """What this kernel takes: Gluon present, N a multiple of the tile width, TMA-aligned contiguous rows, and with
    a gate, no tile across two batch items (one item, or items of whole tiles: L % BLOCK_M == 0)."""
    cfg = {**GLUON_GEMM, **(config or {})}
    return (gluon is not None and a.is_cuda and w.shape[0] % cfg["BLOCK_N"] == 0
            and (gate is None or L >= a.shape[0] or L % cfg["BLOCK_M"] == 0)
            and all(t.is_contiguous() and (t.shape[-1] * t.element_size()) % 16 == 0 for t in (a, w, out)))


def launch_gluon_gemm(a, a_scale, w, w_scale, bias, epilogue, *, a_mode, out, res=None, gate=None, L=1, qs=None,
                      num_sms: int, config=None):
    """`kernels.fp8_gemm._launch` through the Gluon kernel (same arguments; `config` overrides GLUON_GEMM)."""
    cfg = {**GLUON_GEMM, **(config or {})}
    M, K = a.shape
    N = w.shape[0]
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    bk = 128 if a.dtype == FP8_DTYPE else 64
    out_desc = descriptor(out, [bm, bn])
    res_desc = descriptor(res, [bm, bn]) if res is not None else out_desc
    dummy = torch.empty(1, device=a.device, dtype=torch.float32)
    tiles = -(-M // bm) * -(-N // bn)
    _gemm_gluon_kernel[(max(1, min(num_sms, tiles)),)](
        descriptor(a, [bm, bk]), descriptor(w, [bn, bk]), out_desc, res_desc,
        a_scale if a_scale is not None else dummy, w_scale if w_scale is not None else dummy,
        bias if bias is not None else dummy, gate if gate is not None else dummy, qs if qs is not None else dummy,
        M, N, K, L,
        GROUP_M=cfg["GROUP_M"], STAGES=cfg["STAGES"], A_SCALE=a_mode, HAS_BIAS=bias is not None, EPILOGUE=epilogue,
        HAS_GATE=gate is not None, CONSUMER_REGS=cfg["consumer_regs"], GELU_MODE=GELU_MODES[cfg["gelu"]],
        num_warps=cfg["num_warps"],
        enable_fp_fusion=True,  # as the Triton kernel: a * scale + bias as one FMA (later Tritons default to off)
    )
