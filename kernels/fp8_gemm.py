"""FP8 (and bf16) GEMMs with the DiT's elementwise work fused into the epilogue: Triton, persistent, TMA loads.

Why: `torch._scaled_mm` writes a bf16 [M, N] and stops, so every op after a GEMM is another pass over HBM. In the
FFN that pass is the big one: the up projection writes a bf16 hidden activation (32760 x 8960 at 1.3B 480p,
587 MB) that the GELU + quantization kernel reads back. Here the up projection's epilogue applies the GELU and
writes fp8 directly, and the down / output projections add their gated residual into the stream in place.

The fused GELU output is quantized in 1 x 128 groups (one scale per token per 128 channels, the DeepSeek-V3 /
TurboDiffusion-int8 granularity), not per token: a tile sees 128 or 256 of a row's 8960 channels, never the
whole row. The next GEMM then applies one activation scale per 128-wide K-group inside its main loop
(`A_SCALE = GROUPED`): each K step's fp8 product is accumulated in fp32 times its scale, which also promotes the
accumulator every 128 terms. Finer groups quantize more accurately than per-token scales.

Numerics (the float32 references below are the specification; CPU paths use them):
    y   = bf16(sum_k a * b * scale_a * scale_b + bias)          (what `_scaled_mm` writes)
    gelu_quant: g = GELU_tanh(y) rounded to bf16 (`gelu_tanh_ref`), then 1x128 groups as `quantize_rows_fp8_ref`
    residual:   out = bf16(x + bf16(y * gate))  (or bf16(x + y) without a gate): `gated_residual` with bf16 gates
The GEMM sums in its own fixed order (not cuBLAS's), so y is within fp32 rounding of `_scaled_mm`'s, not its bits.
Deterministic: a fixed configuration per shape (`gemm_config`, no autotuning), no atomics, no split-K.
"""
from __future__ import annotations

import torch

from kernels.fp8_linear import (
    FP8_DTYPE,
    _interpreting,
    gelu_tanh_ref,
    quantize_rows_fp8_ref,
)

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU-only platforms use the references
    triton = None

GROUP = 128  # channels per activation scale in the grouped layout
NO_SCALE, ROWWISE, GROUPED = 0, 1, 2  # A_SCALE: bf16 operands / one scale per row / one per row per 128-wide K-group
STORE, GELU_QUANT, RESIDUAL, GELU_QUANT_ROWS = 0, 1, 2, 3  # EPILOGUE


# ------------------------------------------------------------------------------------------ references
def quantize_groups_fp8_ref(x: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] e4m3fn, scales [K / group, M] fp32): `quantize_rows_fp8_ref` on each 1 x group
    piece. Scales are stored group-major so a GEMM's K step reads one contiguous [M] vector."""
    M, K = x.shape
    if K % group:
        raise ValueError(f"grouped fp8 quantization needs K ({K}) to be a multiple of {group}")
    q, s = quantize_rows_fp8_ref(x.reshape(M, K // group, group))
    return q.reshape(M, K), s.t().contiguous()


def quantize_gelu_groups_fp8_ref(h: torch.Tensor, group: int = GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused epilogue's second half: GELU(tanh) of the bf16 GEMM output h [M, N], then 1 x group quantization."""
    return quantize_groups_fp8_ref(gelu_tanh_ref(h), group)


def quantize_gelu_rows_fp8_ref(h: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """GELU(tanh) of the bf16 GEMM output h [M, N], quantized with given per-row scales [M] (`ffn_hidden_scales`):
    codes = e4m3fn(clamp(GELU(h) * (1 / scale)))."""
    g = gelu_tanh_ref(h).float()
    return (g * torch.reciprocal(scales).unsqueeze(1)).clamp(-448.0, 448.0).to(FP8_DTYPE)


def fp8_matmul_grouped_emulated(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor,
                                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Grouped-scale A (codes [M, K], scales [K/128, M]) times row-scaled W^T -> bf16 [M, N], in float32."""
    M, K = xq.shape
    a = xq.float().reshape(M, K // GROUP, GROUP) * xs.t().unsqueeze(-1)
    y = (a.reshape(M, K) @ w.float().t()) * w_scale.float().unsqueeze(0)
    if bias is not None:
        y = y + bias.to(torch.bfloat16).float()
    return y.to(torch.bfloat16)


def residual_ref(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, tokens_per_batch: int) -> torch.Tensor:
    """bf16(x + bf16(y * gate)) for x, y [M, N] bf16 and gate [B, N] bf16 (row r belongs to batch r // L)."""
    if gate is None:
        return (x.float() + y.float()).to(x.dtype)
    g = gate.to(torch.bfloat16).repeat_interleave(tokens_per_batch, dim=0)[: x.shape[0]]
    return (x.float() + (y.float() * g.float()).to(torch.bfloat16).float()).to(x.dtype)


# ------------------------------------------------------------------------------------------ kernel
if triton is not None:
    from kernels.fp8_linear import _fp8_row_scale, _gelu_tanh, _to_fp8

    @triton.jit
    def _bf16(v, HW_CVT: tl.constexpr):
        """fp32 -> bf16, round to nearest even (the interpreter's own cast truncates, so it rounds with integer ops)."""
        if HW_CVT:
            return v.to(tl.bfloat16)
        bits = v.to(tl.uint32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True).to(tl.bfloat16)

    @triton.jit
    def _tile_of(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """Grouped tile order: GROUP_M row-tiles sweep the columns together so their B tiles stay in L2."""
        in_group = GROUP_M * num_pid_n
        first_m = (tile_id // in_group) * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        return first_m + (tile_id % in_group) % size_m, (tile_id % in_group) // size_m

    @triton.jit
    def _store_quantized_group(h, q_desc, qs_ptr, rows, rmask, off_m, col0, M, HW_CVT: tl.constexpr):
        """GELU output h [BM, 128] (fp32, bf16 values) -> fp8 codes via TMA, and its per-row scales at group col0/128."""
        scale, inv = _fp8_row_scale(tl.max(tl.abs(h), axis=1))
        codes = _to_fp8(tl.minimum(tl.maximum(h * inv[:, None], -448.0), 448.0), tl.float8e4nv, HW_CVT)
        q_desc.store([off_m, col0], codes)
        tl.store(qs_ptr + (col0 // 128) * M + rows, scale, mask=rmask)

    @triton.jit
    def _gemm_kernel(
        a_desc, b_desc, out_desc, res_desc, a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr,
        M, N, K, L,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        NUM_SMS: tl.constexpr, A_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
        HAS_GATE: tl.constexpr, HW_CVT: tl.constexpr, FLATTEN: tl.constexpr,
    ):
        """NUM_SMS persistent programs walk the output tiles; each tile's K loop streams A [BM, BK] and B [BN, BK]
        tiles through TMA (B is the weight, [N, K] K-major, as wgmma wants it), then runs the epilogue in registers.
        """
        start = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile_id in tl.range(start, num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN):
            pid_m, pid_n = _tile_of(tile_id, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            rows = off_m + tl.arange(0, BLOCK_M)
            rmask = rows < M
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([off_m, ki * BLOCK_K])
                b = b_desc.load([off_n, ki * BLOCK_K])
                if A_SCALE == 2:  # one scale per row per K-group: promote this group's product in fp32
                    s = tl.load(a_scale_ptr + ki * M + rows, mask=rmask, other=0.0)
                    acc += tl.dot(a, b.T) * s[:, None]
                elif A_SCALE == 0 and not HW_CVT:  # the interpreter's bf16 dot is wrong (Triton 3.9); fp32 is exact
                    acc = tl.dot(a.to(tl.float32), b.to(tl.float32).T, acc)
                else:
                    acc = tl.dot(a, b.T, acc)
            cols = off_n + tl.arange(0, BLOCK_N)
            cmask = cols < N
            if A_SCALE == 1:
                acc = acc * tl.load(a_scale_ptr + rows, mask=rmask, other=0.0)[:, None]
            if A_SCALE != 0:
                acc = acc * tl.load(b_scale_ptr + cols, mask=cmask, other=0.0)[None, :]
            if HAS_BIAS:
                acc = acc + tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
            y = _bf16(acc, HW_CVT)
            if EPILOGUE == 0:
                out_desc.store([off_m, off_n], y)
            elif EPILOGUE == 1:
                h = _gelu_tanh(y.to(tl.float32), tl.bfloat16, HW_CVT)
                if BLOCK_N == 128:
                    _store_quantized_group(h, out_desc, qs_ptr, rows, rmask, off_m, off_n, M, HW_CVT)
                else:  # BLOCK_N == 256: two 128-wide groups
                    h0, h1 = tl.split(tl.permute(tl.reshape(h, (BLOCK_M, 2, 128)), (0, 2, 1)))
                    _store_quantized_group(h0, out_desc, qs_ptr, rows, rmask, off_m, off_n, M, HW_CVT)
                    _store_quantized_group(h1, out_desc, qs_ptr, rows, rmask, off_m, off_n + 128, M, HW_CVT)
            elif EPILOGUE == 3:  # per-token scales known before the GEMM (`ffn_hidden_scales`)
                h = _gelu_tanh(y.to(tl.float32), tl.bfloat16, HW_CVT)
                inv = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32),
                                     tl.load(qs_ptr + rows, mask=rmask, other=1.0))
                out_desc.store([off_m, off_n], _to_fp8(tl.minimum(tl.maximum(h * inv[:, None], -448.0), 448.0),
                                                        tl.float8e4nv, HW_CVT))
            else:
                x = res_desc.load([off_m, off_n]).to(tl.float32)
                if HAS_GATE:
                    batch = rows // L
                    g = tl.load(gate_ptr + batch[:, None] * N + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                                other=0.0)
                    p = _bf16(y.to(tl.float32) * g.to(tl.float32), HW_CVT).to(tl.float32)
                else:
                    p = y.to(tl.float32)
                out_desc.store([off_m, off_n], _bf16(x + p, HW_CVT))


_NUM_SMS: dict[int, int] = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so the persistent loop is exercised
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


# Fixed launch configurations by epilogue (measured in bench/experiments/fp8_gemm_ab.py on an H200); no autotuning,
# so one shape always runs one code and repeats its bits.
DEFAULT_CONFIG = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_stages=3, num_warps=8, FLATTEN=True)
CONFIGS = {STORE: DEFAULT_CONFIG, GELU_QUANT: DEFAULT_CONFIG, GELU_QUANT_ROWS: DEFAULT_CONFIG,
           RESIDUAL: dict(DEFAULT_CONFIG, BLOCK_N=128, num_stages=4)}


def gemm_config(epilogue: int, N: int, K: int) -> dict:
    """The launch configuration for an epilogue and shape (a pure function: same shape, same code, same bits)."""
    cfg = dict(CONFIGS[epilogue])
    if N % 256 and cfg["BLOCK_N"] == 256:
        cfg["BLOCK_N"] = 128
    return cfg


def use_triton_gemm(t: torch.Tensor) -> bool:
    """The Triton GEMMs need Hopper (wgmma fp8, TMA) or the interpreter."""
    if triton is None:
        return False
    if t.is_cuda:
        return torch.cuda.get_device_capability(t.device) >= (9, 0)
    return _interpreting()


def _launch(a, a_scale, w, w_scale, bias, epilogue, *, a_mode, out, res=None, gate=None, L=1, qs=None,
            config=None):
    M, K = a.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"GEMM: A is [{M}, {K}] but the weight is {tuple(w.shape)}")
    cfg = dict(config or gemm_config(epilogue, N, K))
    bm, bn, bk = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    if a_mode == GROUPED and bk != GROUP:
        raise ValueError(f"grouped activation scales need BLOCK_K = {GROUP}")
    if epilogue == GELU_QUANT and (N % GROUP or bn not in (128, 256)):
        raise ValueError(f"GELU + grouped quantization needs N % {GROUP} == 0 and BLOCK_N 128 or 256, got N={N}")
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(w, [bn, bk])
    out_desc = TensorDescriptor.from_tensor(out, [bm, 128 if epilogue == GELU_QUANT else bn])
    res_desc = TensorDescriptor.from_tensor(res, [bm, bn]) if res is not None else out_desc
    dummy = torch.empty(1, device=a.device, dtype=torch.float32)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    grid = (max(1, min(_num_sms(a.device), tiles)),)
    _gemm_kernel[grid](
        a_desc, b_desc, out_desc, res_desc,
        a_scale if a_scale is not None else dummy, w_scale if w_scale is not None else dummy,
        bias if bias is not None else dummy, gate if gate is not None else dummy, qs if qs is not None else dummy,
        M, N, K, L,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.pop("GROUP_M"), NUM_SMS=grid[0], A_SCALE=a_mode,
        HAS_BIAS=bias is not None, EPILOGUE=epilogue, HAS_GATE=gate is not None, HW_CVT=a.is_cuda,
        FLATTEN=cfg.pop("FLATTEN"), enable_fp_fusion=True, **cfg,
    )


def _scale_mode(a: torch.Tensor, a_scale: torch.Tensor | None) -> int:
    if a.dtype != FP8_DTYPE:
        return NO_SCALE
    if a_scale is None:
        raise ValueError("fp8 activations need their scales")
    return ROWWISE if a_scale.dim() == 1 else GROUPED


def fp8_matmul_gelu_quant_triton(xq, xs, w, w_scale, bias=None, *, config=None):
    """FFN up projection + GELU + 1x128 quantization in one kernel: (codes [M, N] e4m3fn, scales [N/128, M] fp32),
    ready for `matmul_residual_triton` with grouped scales. xs: [M] (per token) or [K/128, M] (grouped)."""
    M, N = xq.shape[0], w.shape[0]
    hq = torch.empty((M, N), dtype=FP8_DTYPE, device=xq.device)
    hs = torch.empty((N // GROUP, M), dtype=torch.float32, device=xq.device)
    _launch(xq, xs, w, w_scale, bias, GELU_QUANT, a_mode=_scale_mode(xq, xs), out=hq, qs=hs, config=config)
    return hq, hs


def ffn_hidden_scales(xs: torch.Tensor, w_l1_max: float, b_abs_max: float) -> torch.Tensor:
    """Per-token fp8 scales for GELU(x W^T + b) known before the GEMM: a bound on each row's amax over 448.

    |x . w_j + b_j| <= 448 xs * max_j ||w_j||_1 + max_j |b_j| (|codes| <= 448; w_l1_max over the dequantized
    weight rows) and |GELU(h)| <= |h|, padded by 2^-6 for the GEMM's and bf16's rounding, so no code ever clamps.
    The bound overshoots the true amax (~40x on Gaussian rows), which only moves values e4m3 could not keep anyway
    into subnormals: e4m3's relative step is the same across its normal range (measured on random FFN rows: 2.65%
    relative L2 against 2.65% with the exact amax). In exchange the up projection's epilogue quantizes without
    seeing the whole row, and the down projection keeps cuBLAS's row-wise GEMM."""
    return (xs * (448.0 * w_l1_max) + b_abs_max) * ((1.0 + 2.0**-6) / 448.0)


def weight_row_l1_max(w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """max_j ||w_j||_1 of an fp8 weight (codes [N, K] times scales [N]), in float64, rounded up: 0-dim fp32."""
    return ((w.double().abs().sum(dim=1) * w_scale.double()).max() * (1 + 2**-20)).float()


def fp8_matmul_gelu_quant_rows_triton(xq, xs, w, w_scale, bias, hs, *, config=None):
    """FFN up projection + GELU + per-token quantization with the given scales hs [M] (`ffn_hidden_scales`):
    codes [M, N] e4m3fn for `fp8_matmul` / cuBLAS with row-wise scales hs."""
    hq = torch.empty((xq.shape[0], w.shape[0]), dtype=FP8_DTYPE, device=xq.device)
    _launch(xq, xs, w, w_scale, bias, GELU_QUANT_ROWS, a_mode=_scale_mode(xq, xs), out=hq, qs=hs, config=config)
    return hq


def matmul_triton(a, a_scale, w, w_scale=None, bias=None, *, config=None):
    """a @ w^T (+ bias) -> bf16 [M, N]; a fp8 with row or group scales (w fp8 + row scales), or a and w bf16."""
    out = torch.empty((a.shape[0], w.shape[0]), dtype=torch.bfloat16, device=a.device)
    _launch(a, a_scale, w, w_scale, bias, STORE, a_mode=_scale_mode(a, a_scale), out=out, config=config)
    return out


def matmul_residual_triton(a, a_scale, w, w_scale, bias, residual, gate=None, tokens_per_batch=None, *,
                           out=None, config=None):
    """residual + (a @ w^T + bias) * gate, written to `out` (default: in place into `residual`, [M, N] bf16).

    gate [B, N] bf16 with row r in batch r // tokens_per_batch, or None for a plain residual add."""
    if residual.dtype != torch.bfloat16 or not residual.is_contiguous() or residual.shape != (a.shape[0], w.shape[0]):
        raise ValueError(f"residual must be a contiguous bf16 [{a.shape[0]}, {w.shape[0]}] tensor")
    out = residual if out is None else out
    L = tokens_per_batch or a.shape[0]
    if gate is not None:
        gate = gate.to(torch.bfloat16).contiguous()
    _launch(a, a_scale, w, w_scale, bias, RESIDUAL, a_mode=_scale_mode(a, a_scale), out=out, res=residual,
            gate=gate, L=L, config=config)
    return out


__all__ = [
    "GROUP", "ffn_hidden_scales", "fp8_matmul_gelu_quant_rows_triton", "fp8_matmul_gelu_quant_triton", "fp8_matmul_grouped_emulated", "gemm_config", "matmul_residual_triton",
    "matmul_triton", "quantize_gelu_groups_fp8_ref", "quantize_gelu_rows_fp8_ref", "quantize_groups_fp8_ref", "residual_ref", "use_triton_gemm", "weight_row_l1_max",
]
