"""FP8 (and bf16) GEMMs with the DiT's elementwise work fused into the epilogue: Triton, persistent, TMA loads.

Why: `torch._scaled_mm` writes a bf16 [M, N] and stops, so every op after a GEMM is another pass over HBM. In the
FFN that pass is the big one: the up projection writes a bf16 hidden activation (32760 x 8960 at 1.3B 480p,
587 MB) that the GELU + quantization kernel reads back. Here the up projection's epilogue applies the GELU and
writes the fp8 codes directly, and the down / output projections add their gated residual into the stream in place.

A tile sees 256 of a hidden row's 8960 channels, never the row's amax, so the hidden activation's per-token scale
is fixed before the GEMM from a bound (`ffn_hidden_scales`): e4m3 keeps the same relative step across its normal
range, so a scale ~40x above the amax costs nothing measurable (2.67% vs 2.66% error through the down projection,
bench/experiments/fp8_gemm_ab.py), and the down projection keeps plain row-wise scales. (1 x 128 group scales,
the other way out, cost the down GEMM a scaled accumulation per K step: 1.1-1.25 ms instead of 0.67 ms at 1.3B in
Triton, measured on an H100, so they were dropped.)

Numerics (the float32 references below are the specification; CPU paths use them):
    y   = bf16(sum_k a * b * scale_a * scale_b + bias)          (what `_scaled_mm` writes)
    gelu_quant_rows: codes = e4m3(clamp(GELU_tanh(y) * (1 / scale_row)))   (`quantize_gelu_rows_fp8_ref`)
    residual:        out = bf16(x + bf16(y * gate))  (or bf16(x + y) without a gate): `gated_residual`, bf16 gates
The GEMM sums in its own fixed order (not cuBLAS's), so y is within fp32 rounding of `_scaled_mm`'s, not its bits.
Deterministic: a fixed configuration per epilogue and dtype (`gemm_config`, no autotuning), no atomics, no split-K;
a tile's result depends on neither the tile shape nor the number of SMs.

On Hopper the epilogues that cost most (GELU + quantization, the bf16 gated residual) run the same math as a
ping-pong warp-specialized Gluon kernel (kernels/gemm_gluon.py), which hides a tile's epilogue under the next
tile's MMAs; `GLUON_DEFAULT` says which, `_launch` routes.
"""
from __future__ import annotations

import warnings

import torch

from kernels.fp8_linear import (
    FP8_DTYPE,
    FP8_MAX,
    _interpreting,
    _use_triton,
    fp8_cast_mode,
    gelu_tanh_ref,
)

from kernels.gemm_gluon import gluon_gemm_ok, launch_gluon_gemm

try:
    import triton
    import triton.language as tl
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - CPU-only platforms use the references
    triton = None

NO_SCALE, ROWWISE = 0, 1  # A_SCALE: bf16 operands / fp8 with one scale per row (and per weight row)
STORE, GELU_QUANT_ROWS, RESIDUAL = 0, 1, 2  # EPILOGUE


# ------------------------------------------------------------------------------------------ references
def quantize_gelu_rows_fp8_ref(h: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """GELU(tanh) of the bf16 GEMM output h [M, N], quantized with given per-row scales [M] (`ffn_hidden_scales`):
    codes = e4m3fn(clamp(GELU(h) * (1 / scale)))."""
    g = gelu_tanh_ref(h).float()
    return (g * torch.reciprocal(scales).unsqueeze(1)).clamp(-448.0, 448.0).to(FP8_DTYPE)


def residual_ref(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor | None, tokens_per_batch: int) -> torch.Tensor:
    """bf16(x + bf16(y * gate)) for x, y [M, N] bf16 and gate [B, N] bf16 (row r belongs to batch r // L)."""
    if gate is None:
        return (x.float() + y.float()).to(x.dtype)
    g = gate.to(torch.bfloat16).repeat_interleave(tokens_per_batch, dim=0)[: x.shape[0]]
    return (x.float() + (y.float() * g.float()).to(torch.bfloat16).float()).to(x.dtype)


# ------------------------------------------------------------------------------------------ kernel
if triton is not None:
    from kernels.fp8_linear import _fp8_codes, _gelu_tanh
    from kernels.tiles import grouped_tile

    @triton.jit
    def _hidden_scales_kernel(xs_ptr, w_ptr, b_ptr, out_ptr, M, BLOCK: tl.constexpr, PAD: tl.constexpr):
        """`ffn_hidden_scales`' torch expression, (xs * (448 w) + b) * PAD, rounded per operation (no FMA)."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < M
        w448 = tl.load(w_ptr) * 448.0
        v = tl.load(xs_ptr + offs, mask=mask, other=0.0) * w448 + tl.load(b_ptr)
        tl.store(out_ptr + offs, v * PAD, mask=mask)

    @triton.jit
    def _bf16(v, HW_CVT: tl.constexpr):
        """fp32 -> bf16, round to nearest even (the interpreter's own cast truncates, so it rounds with integer ops)."""
        if HW_CVT:
            return v.to(tl.bfloat16)
        bits = v.to(tl.uint32, bitcast=True)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True).to(tl.bfloat16)

    @triton.jit
    def _gemm_kernel(
        a_desc, b_desc, out_desc, res_desc, a_scale_ptr, b_scale_ptr, bias_ptr, gate_ptr, qs_ptr,
        M, N, K, L,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
        NUM_SMS: tl.constexpr, A_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EPILOGUE: tl.constexpr,
        HAS_GATE: tl.constexpr, HW_CVT: tl.constexpr, FLATTEN: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
    ):
        """NUM_SMS persistent programs walk the output tiles; each tile's K loop streams A [BM, BK] and B [BN, BK]
        tiles through TMA (B is the weight, [N, K] K-major, as wgmma wants it), then runs the epilogue in registers.
        """
        start = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(N, BLOCK_N)
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile_id in tl.range(start, num_pid_m * num_pid_n, NUM_SMS, flatten=FLATTEN,
                                warp_specialize=WARP_SPECIALIZE):
            pid_m, pid_n = grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M)
            off_m = pid_m * BLOCK_M
            off_n = pid_n * BLOCK_N
            rows = off_m + tl.arange(0, BLOCK_M)
            rmask = rows < M
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([off_m, ki * BLOCK_K])
                b = b_desc.load([off_n, ki * BLOCK_K])
                if A_SCALE == 0 and not HW_CVT:  # the interpreter's bf16 dot is wrong (Triton 3.9); fp32 is exact
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
            elif EPILOGUE == 1:  # per-token scales known before the GEMM (`ffn_hidden_scales`)
                h = _gelu_tanh(y.to(tl.float32), tl.bfloat16, HW_CVT)
                inv = tl.math.div_rn(tl.full([BLOCK_M], 1.0, tl.float32),
                                     tl.load(qs_ptr + rows, mask=rmask, other=1.0))
                out_desc.store([off_m, off_n], _fp8_codes(h, inv, tl.float8e4nv, HW_CVT))
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


# Fixed launch configurations (bench/experiments/fp8_gemm_ab.py on an H100; times at the 1.3B / 14B shapes); no
# autotuning, so one shape always runs one code and repeats its bits. 128 x 256 x 128 tiles, 8 warps, grouped tile
# order over 8 row-tiles; `FLATTEN` (one software pipeline across tiles) helps the store epilogues, but costs the
# residual epilogue's extra tile of shared memory more than it gains.
_FP8_TILE = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8)
CONFIGS = {
    (STORE, "fp8"): dict(_FP8_TILE, num_stages=3, FLATTEN=True),  # 0.131 / 2.689 ms (cuBLAS 0.125 / 2.852)
    (GELU_QUANT_ROWS, "fp8"): dict(_FP8_TILE, num_stages=4, FLATTEN=True),  # 0.974 / 8.847 (cuBLAS + kernel 1.144 / 9.171)
    (RESIDUAL, "fp8"): dict(_FP8_TILE, num_stages=3, FLATTEN=False),  # 0.665 / 7.635 (cuBLAS + kernel 0.778 / 8.568)
    (STORE, "bf16"): dict(_FP8_TILE, BLOCK_K=64, num_stages=3, FLATTEN=True),  # 0.220 / 5.024 (cuBLAS 0.207 / 5.228)
    (RESIDUAL, "bf16"): dict(_FP8_TILE, BLOCK_N=128, BLOCK_K=64, num_stages=4, FLATTEN=True),  # 0.282 / 5.955 (0.311 / 6.106)
}


def gemm_config(epilogue: int, dtype: torch.dtype, N: int) -> dict:
    """The launch configuration for an epilogue, operand dtype and width (a pure function: same shape, same code)."""
    cfg = dict(CONFIGS[epilogue, "fp8" if dtype == FP8_DTYPE else "bf16"])
    if N % cfg["BLOCK_N"]:
        cfg["BLOCK_N"] = 128
    return cfg


# Which (epilogue, operand kind) run as the ping-pong Gluon kernel (kernels/gemm_gluon.py) on Hopper where it takes
# the shape (`gluon_gemm_ok`); the rest run the Triton kernel above. `set_gluon_gemms` changes it (benchmarks).
# Measured on an H100 (bench/experiments/fp8_gemm_ab.py, same run), 1.3B / 14B shapes: the epilogues that cost
# most win, since they now run under the other consumer's MMAs: FFN up + GELU + quant 0.901 / 8.325 ms against
# Triton 0.993 / 8.689; bf16 o + gated residual 0.253 / 6.156 against 0.289 / 6.372. The plain store (0.173 vs 0.131
# ms) and the fp8 residual (0.733 vs 0.681-0.716) lose: there the 128 x 128 consumer tile's mainloop (two m64n128
# wgmmas per K step, B read from shared memory twice) is slower than the Triton kernel's 128 x 256 tile.
GLUON_DEFAULT = {key: key in ((GELU_QUANT_ROWS, "fp8"), (RESIDUAL, "bf16")) for key in CONFIGS}


_GLUON_FAILED = False


def _gluon_failed(exc: Exception) -> None:
    """The Gluon kernel did not compile or launch (it fails before it writes): use the Triton kernel from now on."""
    global _GLUON_FAILED
    _GLUON_FAILED = True
    warnings.warn(f"fused GEMMs: the Gluon kernel failed with this Triton ({type(exc).__name__}: {exc}); using the "
                  "Triton kernel from now on")


def set_gluon_gemms(on: bool | dict) -> None:
    """Route every (epilogue, kind) to the Gluon kernel (True), none (False), or as a {(epilogue, kind): bool} map."""
    GLUON_DEFAULT.update(on if isinstance(on, dict) else {key: bool(on) for key in GLUON_DEFAULT})


def use_triton_gemm(t: torch.Tensor) -> bool:
    """The Triton GEMMs need Hopper (wgmma fp8, TMA) or the interpreter."""
    if triton is None:
        return False
    if t.is_cuda:
        return torch.cuda.get_device_capability(t.device) >= (9, 0)
    return _interpreting()


def _launch(a, a_scale, w, w_scale, bias, epilogue, *, a_mode, out, res=None, gate=None, L=1, qs=None,
            config=None):
    """Run one GEMM + epilogue. `config`: a Triton launch configuration, or {"GLUON": True} for the Gluon kernel
    (default: GLUON_DEFAULT for this epilogue and operand kind, then `gemm_config`)."""
    M, K = a.shape
    N = w.shape[0]
    if w.shape[1] != K:
        raise ValueError(f"GEMM: A is [{M}, {K}] but the weight is {tuple(w.shape)}")
    kind = "fp8" if a.dtype == FP8_DTYPE else "bf16"
    forced = bool(config and config.get("GLUON"))
    gluon = forced or (not config and GLUON_DEFAULT[epilogue, kind] and not _GLUON_FAILED)
    if gluon and gluon_gemm_ok(a, w, out, gate, L, config):
        try:
            launch_gluon_gemm(a, a_scale, w, w_scale, bias, epilogue, a_mode=a_mode, out=out, res=res, gate=gate,
                              L=L, qs=qs, num_sms=_num_sms(a.device),
                              config={k: v for k, v in (config or {}).items() if k != "GLUON"})
            return
        except Exception as exc:  # noqa: BLE001 - a Triton whose Gluon differs: the Triton kernel, loudly
            if forced:
                raise
            _gluon_failed(exc)
    cfg = dict(config if config and "BLOCK_M" in config else gemm_config(epilogue, a.dtype, N))
    bm, bn, bk = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N"), cfg.pop("BLOCK_K")
    cfg.pop("GLUON", None)
    a_desc = TensorDescriptor.from_tensor(a, [bm, bk])
    b_desc = TensorDescriptor.from_tensor(w, [bn, bk])
    out_desc = TensorDescriptor.from_tensor(out, [bm, bn])
    res_desc = TensorDescriptor.from_tensor(res, [bm, bn]) if res is not None else out_desc
    dummy = torch.empty(1, device=a.device, dtype=torch.float32)
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    grid = (max(1, min(_num_sms(a.device) * cfg.pop("PROGRAMS_PER_SM", 1), tiles)),)
    _gemm_kernel[grid](
        a_desc, b_desc, out_desc, res_desc,
        a_scale if a_scale is not None else dummy, w_scale if w_scale is not None else dummy,
        bias if bias is not None else dummy, gate if gate is not None else dummy, qs if qs is not None else dummy,
        M, N, K, L,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=cfg.pop("GROUP_M"), NUM_SMS=grid[0], A_SCALE=a_mode,
        HAS_BIAS=bias is not None, EPILOGUE=epilogue, HAS_GATE=gate is not None, HW_CVT=fp8_cast_mode(a, True),
        FLATTEN=cfg.pop("FLATTEN"), WARP_SPECIALIZE=cfg.pop("WARP_SPECIALIZE", False), enable_fp_fusion=True, **cfg,
    )


def _scale_mode(a: torch.Tensor, a_scale: torch.Tensor | None) -> int:
    if a.dtype != FP8_DTYPE:
        return NO_SCALE
    if a_scale is None:
        raise ValueError("fp8 activations need their scales")
    if a_scale.dim() != 1:
        raise ValueError(f"fp8 activations take one scale per row, got scales of shape {tuple(a_scale.shape)}")
    return ROWWISE


_HIDDEN_PAD = (1.0 + 2.0**-6) / FP8_MAX


def ffn_hidden_scales(xs: torch.Tensor, w_l1_max: torch.Tensor | float, b_abs_max: torch.Tensor | float) -> torch.Tensor:
    """Per-token fp8 scales for GELU(x W^T + b) known before the GEMM: a bound on each row's amax over 448.

    |x . w_j + b_j| <= 448 xs * max_j ||w_j||_1 + max_j |b_j| (|codes| <= 448; w_l1_max over the dequantized
    weight rows) and |GELU(h)| <= |h|, padded by 2^-6 for the GEMM's and bf16's rounding, so no code ever clamps.
    The bound overshoots the true amax (~40x on Gaussian rows), which only moves values e4m3 could not keep anyway
    into subnormals: e4m3's relative step is the same across its normal range (measured through the down
    projection at the Wan shapes: 2.67% relative L2 against 2.66% with the exact amax). In exchange the up projection's epilogue quantizes without
    seeing the whole row, and the down projection keeps cuBLAS's row-wise GEMM.

    On the GPU one Triton launch computes it (torch's expression takes four per FFN), with the same fp32 roundings
    in the same order."""
    if (_use_triton(xs) and xs.dtype == torch.float32 and xs.dim() == 1
            and all(torch.is_tensor(v) and v.device == xs.device and v.numel() == 1 for v in (w_l1_max, b_abs_max))):
        out = torch.empty_like(xs)
        block = 1024
        _hidden_scales_kernel[(triton.cdiv(xs.numel(), block),)](
            xs.contiguous(), w_l1_max.float(), b_abs_max.float(), out, xs.numel(), BLOCK=block, PAD=_HIDDEN_PAD,
            enable_fp_fusion=False)  # three separately rounded fp32 operations, as torch's
        return out
    return ffn_hidden_scales_ref(xs, w_l1_max, b_abs_max)


def ffn_hidden_scales_ref(xs: torch.Tensor, w_l1_max: torch.Tensor | float,
                          b_abs_max: torch.Tensor | float) -> torch.Tensor:
    """`ffn_hidden_scales` as torch operations."""
    return (xs * (448.0 * w_l1_max) + b_abs_max) * _HIDDEN_PAD


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
    """a @ w^T (+ bias) -> bf16 [M, N]; a fp8 with row scales (w fp8 + row scales), or a and w bf16."""
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
    "ffn_hidden_scales", "ffn_hidden_scales_ref", "fp8_matmul_gelu_quant_rows_triton", "gemm_config",
    "matmul_residual_triton", "matmul_triton", "quantize_gelu_rows_fp8_ref", "residual_ref", "use_triton_gemm",
    "weight_row_l1_max",
]
