"""FP8 (e4m3fn) linear layers with per-output-channel weight scales and per-token activation scales.

Why: on Hopper, `torch._scaled_mm` with row-wise scales runs the DiT GEMMs about 1.5x faster than bf16
(REFERENCE.md section 11) while torch's int8 `_int_mm` is slow there. The weight is quantized once
(`quantize_weight_fp8`), the activation per call by one fused Triton kernel (`quantize_per_token_fp8`).

Numerics, identical on every device up to the GEMM's summation order:
    scale = max(amax(|row|), 2^-40) * fp32(1/448)        (fp32; amax-0 rows get a tiny finite scale)
    q     = e4m3fn_rne(clamp(row * (1 / scale), -448, 448))
    y     = bf16(sum_k qx * qw * scale_x * scale_w + bias_bf16), then cast to x.dtype
The CPU path emulates this with a float32 matmul so tests run without a GPU.

The FFN's hidden activation takes one more fused step (`quantize_gelu_per_token_fp8`): GELU(tanh) of the bf16
up-projection output, rounded to bf16 (what `nn.GELU` would store), then quantized, in one read of the row.
Both the reference and the kernel use the sigmoid form x / (1 + exp(-2u)), which is more accurate than torch's
0.5 x (1 + tanh u) (that one cancels for negative x). The reference (`gelu_tanh_ref`, the CPU path) builds exp
from IEEE +, * only; the kernel uses the GPU's fast exp2 and divide with FMA contraction, so it stays
memory-bound: its fp32 GELU is within a few fp32 ulps of the reference, i.e. the bf16 value is the same or one
bf16 ulp away, and an fp8 code at most one e4m3 step away. Run to run on one device the bits are identical
(fixed launch configuration, no atomics, no autotuning).
"""
from __future__ import annotations

import os

import torch
from torch import nn

try:  # triton is a Linux-only dependency; CPU-only platforms use the torch reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
# Both constants are exactly representable in fp32, so torch (CPU or CUDA, float or double opmath) and
# Triton compute bit-identical scales from them.
RECIP_FP8_MAX = float(torch.tensor(1.0 / FP8_MAX, dtype=torch.float32))
AMAX_FLOOR = 2.0**-40

_MAX_SINGLE_TILE = 16384  # cap on `max_tile` (rows kept whole in registers); tests lower it to force the loop
_ROW_ELEMENTS = 4096  # narrow rows: pack this many elements per program (several rows each)


def _f32(v: float) -> float:
    """v rounded to fp32: the constant torch (fp32 opmath) and Triton both compute with."""
    return float(torch.tensor(v, dtype=torch.float32))


# GELU(tanh) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3)
GELU_KAPPA = _f32(0.044715)
GELU_NEG_TWO_BETA = _f32(-2.0 * 0.7978845608028654)
# Cephes expf: exp(v) = 2^k * p(r), k = rint(v / ln2), r = v - k ln2 (ln2 split in two so k * LN2_HI is exact)
_EXP_CLAMP = 80.0  # |v| <= 80 keeps 2^k and the result normal (no denormals anywhere)
_LOG2E = _f32(1.4426950408889634)
_RINT_MAGIC = 12582912.0  # 1.5 * 2^23: (v + M) - M rounds v to an integer, ties to even, in fp32
_LN2_HI = 0.693359375
_LN2_LO = _f32(-2.12194440e-4)
_EXP_POLY = tuple(_f32(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                                    1.6666665459e-1, 5.0000001201e-1))
# The GPU GELU (Triton and Gluon kernels): x / (1 + 2^(x (C1 + C2 x^2))), C1 = -2 sqrt(2/pi) log2(e),
# C2 = C1 * 0.044715; the exponent is clamped to +-80 / ln 2 like the reference's exp argument (|v| <= 80), which
# also keeps 1 + 2^t far from fp32 overflow
GELU_EXP2_C1 = _f32(-2.0 * 0.7978845608028654 * 1.4426950408889634)
GELU_EXP2_C2 = _f32(-2.0 * 0.7978845608028654 * 1.4426950408889634 * 0.044715)
GELU_EXP2_CLAMP = _f32(_EXP_CLAMP * 1.4426950408889634)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _use_triton(t: torch.Tensor) -> bool:
    """The fused kernel runs on sm89+ GPUs (Triton's fp8e4nv casts need them) and in the interpreter."""
    if triton is None:
        return False
    if t.is_cuda:
        return torch.cuda.get_device_capability(t.device) >= (8, 9)
    return _interpreting()


# ------------------------------------------------------------------------------------------ reference
def quantize_rows_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise (last dim) e4m3fn quantization in torch: the oracle the Triton kernel must match bit for bit."""
    xf = x.float()
    amax = xf.abs().amax(dim=-1)
    scale = torch.clamp(amax, min=AMAX_FLOOR) * RECIP_FP8_MAX
    inv = torch.reciprocal(scale)
    q = (xf * inv.unsqueeze(-1)).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale


def quantize_per_token_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (x_fp8 [M, K] e4m3fn, x_scale [M] fp32); torch version of `quantize_per_token_fp8`."""
    return quantize_rows_fp8_ref(x)


def exp_portable_ref(v: torch.Tensor) -> torch.Tensor:
    """fp32 exp(v) for |v| <= 80 (clamped) from IEEE +, * and exponent bits only: the same bits on every device.

    Within 1.4 ulp of exp; written op by op (each torch op rounds once, like the kernel with FMA contraction off).
    """
    v = v.clamp(-_EXP_CLAMP, _EXP_CLAMP)
    k = (v * _LOG2E + _RINT_MAGIC) - _RINT_MAGIC
    r = v - k * _LN2_HI
    r = r - k * _LN2_LO
    p = r * _EXP_POLY[0] + _EXP_POLY[1]
    for c in _EXP_POLY[2:]:
        p = p * r + c
    y = p * r
    y = y * r
    y = y + r
    y = y + 1.0
    two_k = ((k.to(torch.int32) + 127) << 23).view(torch.float32)
    return y * two_k


def gelu_tanh_ref(x: torch.Tensor) -> torch.Tensor:
    """GELU(tanh approximation) computed in fp32 as x / (1 + exp(-2u)), rounded once to x.dtype.

    Same function as `nn.GELU(approximate="tanh")` (within a bf16 ulp; exactly rounded where torch's tanh form
    loses bits to cancellation), but reproducible bit for bit by the Triton kernel on any device.
    """
    xf = x.float()
    x3 = xf * xf
    x3 = x3 * xf
    z = xf + GELU_KAPPA * x3
    z = z * GELU_NEG_TWO_BETA
    return (xf / (exp_portable_ref(z) + 1.0)).to(x.dtype)


def quantize_gelu_per_token_fp8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> per-token fp8 of GELU(x) (rounded to x.dtype first, as the unfused module chain stores it)."""
    return quantize_rows_fp8_ref(gelu_tanh_ref(x))


def quantize_weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (w_fp8 [N, K] e4m3fn, w_scale [N] fp32), one scale per output channel (amax/448).

    Runs once per layer at load time, on w's device; the fp32 temporary is one layer's worth.
    """
    if w.dim() != 2:
        raise ValueError(f"quantize_weight_fp8 expects a 2-D weight [N, K], got shape {tuple(w.shape)}")
    return quantize_rows_fp8_ref(w)


# ------------------------------------------------------------------------------------------ triton kernel
if triton is not None:
    _SIGN_BIT = tl.constexpr(0x80000000)
    _AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
    _RECIP_FP8_MAX = tl.constexpr(RECIP_FP8_MAX)
    _FP8_MAX = tl.constexpr(FP8_MAX)

    @triton.jit
    def _round_to_e4m3_grid(v):
        """Round fp32 v (|v| <= 448) to the nearest e4m3fn value (ties to even), still in fp32.

        Done with integer/fp32 ops so the final cast is exact: Triton's interpreter mis-rounds fp32->fp8 at
        binade edges (31.5 -> 16), and on GPU this equals the hardware `cvt.rn` result anyway.
        """
        bits = v.to(tl.uint32, bitcast=True)
        sign = bits & _SIGN_BIT
        mag = bits & 0x7FFFFFFF
        # normal e4m3 (|v| >= 2^-6): keep 3 of fp32's 23 mantissa bits, round half to even
        normal = (mag + 0x7FFFF + ((mag >> 20) & 1)) & 0xFFF00000
        # subnormal e4m3 (|v| < 2^-6): multiples of 2^-9; around 2^14 fp32's spacing is 2^-9, so the add rounds
        a = mag.to(tl.float32, bitcast=True)
        sub = ((a + 16384.0) - 16384.0).to(tl.uint32, bitcast=True)
        return (tl.where(a >= 0.015625, normal, sub) | sign).to(tl.float32, bitcast=True)

    _GELU_C1 = tl.constexpr(GELU_EXP2_C1)
    _GELU_C2 = tl.constexpr(GELU_EXP2_C2)
    _EXP2_CLAMP = tl.constexpr(GELU_EXP2_CLAMP)

    @triton.jit
    def _gelu_tanh(x, ACT_DTYPE: tl.constexpr, HW_CVT: tl.constexpr):
        """GELU(tanh) = x / (1 + exp(-2u)) in fp32 with the fast exp2 and divide (a few fp32 ulps from
        `gelu_tanh_ref`), rounded to the activation dtype (kept fp32)."""
        t = x * (_GELU_C1 + _GELU_C2 * (x * x))
        t = tl.minimum(tl.maximum(t, -_EXP2_CLAMP), _EXP2_CLAMP)
        g = tl.fdiv(x, 1.0 + tl.math.exp2(t))
        if ACT_DTYPE == tl.bfloat16 and HW_CVT:  # GPU: cvt.rn.bf16.f32, round to nearest even
            g = g.to(tl.bfloat16).to(tl.float32)
        elif ACT_DTYPE == tl.bfloat16:  # round to bf16 with integer ops (the interpreter's cast truncates)
            bits = g.to(tl.uint32, bitcast=True)
            g = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
        elif ACT_DTYPE == tl.float16:
            g = g.to(tl.float16).to(tl.float32)
        return g

    @triton.jit
    def _load_segment(x_ptr, rows, rmask, stride_x, K, OFF: tl.constexpr, WIDTH: tl.constexpr,
                      GELU: tl.constexpr, ACT_DTYPE: tl.constexpr, HW_CVT: tl.constexpr):
        """Columns [OFF, OFF + WIDTH) of ROWS rows as fp32 (GELU applied if asked; masked lanes are 0)."""
        cols = OFF + tl.arange(0, WIDTH)
        mask = rmask[:, None] & (cols < K)[None, :]
        v = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if GELU:
            v = _gelu_tanh(v, ACT_DTYPE, HW_CVT)  # GELU(0) = 0: masked lanes stay out of the amax
        return v, mask, cols

    @triton.jit
    def _to_fp8(q, out_ty, HW_CVT: tl.constexpr):
        """fp32 (|q| <= 448) -> e4m3fn, round to nearest even: the hardware cvt on GPU (HW_CVT), else exactly
        rounded with integer ops first (the interpreter's own cast mis-rounds)."""
        if HW_CVT:
            return q.to(out_ty)
        return _round_to_e4m3_grid(q).to(out_ty)

    @triton.jit
    def _fp8_row_scale(amax):
        """Per-row scale max(amax, 2^-40) / 448 and its correctly rounded reciprocal: `quantize_rows_fp8_ref`'s
        math, shared by every kernel that quantizes rows (so they all give the reference's bits)."""
        scale = tl.maximum(amax, _AMAX_FLOOR) * _RECIP_FP8_MAX
        return scale, tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)

    @triton.jit
    def _fp8_codes(v, inv, out_ty, HW_CVT: tl.constexpr):
        """[ROWS, W] fp32 rows times their reciprocal scales [ROWS], clamped to +-448, as e4m3fn codes. HW_CVT is a
        `fp8_cast_mode`: 2 lets the hardware cast saturate by itself (`cvt.rn.satfinite.e4m3x2.f32`, the same bits
        as clamping first, two instructions a value fewer)."""
        if HW_CVT == 2:
            return (v * inv[:, None]).to(out_ty)
        return _to_fp8(tl.minimum(tl.maximum(v * inv[:, None], -_FP8_MAX), _FP8_MAX), out_ty, HW_CVT)

    @triton.jit
    def _store_segment(q_ptr, rows, stride_q, v, mask, cols, inv, HW_CVT: tl.constexpr):
        tl.store(q_ptr + rows[:, None] * stride_q + cols[None, :], _fp8_codes(v, inv, q_ptr.dtype.element_ty, HW_CVT),
                 mask=mask)

    @triton.jit
    def _quantize_rows_kernel(
        x_ptr, q_ptr, scale_ptr, M, K, stride_x, stride_q,
        ROWS: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, W3: tl.constexpr,
        GELU: tl.constexpr, ACT_DTYPE: tl.constexpr, HW_CVT: tl.constexpr,
    ):
        """ROWS whole rows per program, each held in registers as up to three power-of-two segments
        (W1 + W2 + W3 >= K, e.g. 8960 = 8192 + 512 + 256): one read of x, one write of q, no padding waste.

        Why not one next_pow2(K) tile: at K = 8960 that is 16384 lanes (45% masked) and so many registers per
        program that one row per SM was in flight (0.71 ms for 32760 rows on an H200, 4x the memory time).
        """
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        rmask = rows < M
        v1, m1, c1 = _load_segment(x_ptr, rows, rmask, stride_x, K, 0, W1, GELU, ACT_DTYPE, HW_CVT)
        amax = tl.max(tl.abs(v1), axis=1)
        if W2 > 0:
            v2, m2, c2 = _load_segment(x_ptr, rows, rmask, stride_x, K, W1, W2, GELU, ACT_DTYPE, HW_CVT)
            amax = tl.maximum(amax, tl.max(tl.abs(v2), axis=1))
        if W3 > 0:
            v3, m3, c3 = _load_segment(x_ptr, rows, rmask, stride_x, K, W1 + W2, W3, GELU, ACT_DTYPE, HW_CVT)
            amax = tl.maximum(amax, tl.max(tl.abs(v3), axis=1))
        scale, inv = _fp8_row_scale(amax)
        tl.store(scale_ptr + rows, scale, mask=rmask)
        _store_segment(q_ptr, rows, stride_q, v1, m1, c1, inv, HW_CVT)
        if W2 > 0:
            _store_segment(q_ptr, rows, stride_q, v2, m2, c2, inv, HW_CVT)
        if W3 > 0:
            _store_segment(q_ptr, rows, stride_q, v3, m3, c3, inv, HW_CVT)

    @triton.jit
    def _quantize_rows_looped_kernel(
        x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q,
        BLOCK_K: tl.constexpr, GELU: tl.constexpr, ACT_DTYPE: tl.constexpr, HW_CVT: tl.constexpr,
    ):
        """Rows wider than the register cap: pass 1 takes the amax tile by tile, pass 2 re-reads the row
        (from L2: it was just read) and stores; with GELU the activation is recomputed in pass 2."""
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        q_row = q_ptr + row * stride_q
        cols = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xk = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
            if GELU:
                xk = _gelu_tanh(xk, ACT_DTYPE, HW_CVT)
            acc = tl.maximum(acc, tl.abs(xk))
        amax = tl.max(acc, axis=0)
        scale, inv = _fp8_row_scale(amax)
        tl.store(scale_ptr + row, scale)
        for k0 in range(0, K, BLOCK_K):
            m = k0 + cols < K
            xk = tl.load(x_row + k0 + cols, mask=m, other=0.0).to(tl.float32)
            if GELU:
                xk = _gelu_tanh(xk, ACT_DTYPE, HW_CVT)
            q = tl.minimum(tl.maximum(xk * inv, -_FP8_MAX), _FP8_MAX)
            tl.store(q_row + k0 + cols, _to_fp8(q, q_ptr.dtype.element_ty, HW_CVT), mask=m)

    _ACT_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


def _prev_pow2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def row_segments(K: int) -> tuple[int, int, int]:
    """Power-of-two widths (W1, W2, W3) covering K, padding under K/6 (+16) lanes; 0 = unused segment.

    8960 -> (8192, 512, 256), 1536 -> (1024, 512, 0), 13824 -> (8192, 4096, 2048), 200 -> (128, 64, 16).
    """
    if K <= 16:
        return 16, 0, 0
    w1 = _prev_pow2(K)
    rest = K - w1
    w2 = _prev_pow2(rest) if rest else 0
    rest -= w2
    w3 = max(16, triton.next_power_of_2(rest)) if rest else 0
    return w1, w2, w3


# On the GPU, round with the hardware cvt (fp32 -> e4m3fn / bf16, round to nearest even): the same bits as the
# integer rounding (checked on an H200 by the tests and bench/bench_kernels_quick.py) at fewer instructions.
HW_FP8_CVT = True
SATURATING_CAST = True  # the hardware e4m3 cast saturates by itself; False clamps first (benchmarks: the former code)


def fp8_cast_mode(x: torch.Tensor, hw_cvt: bool | None = None) -> int:
    """How kernels cast to e4m3 (their HW_CVT constexpr): 0 integer rounding (CPU, the interpreter), 1 the hardware
    cast after an explicit clamp to +-448, 2 the hardware cast's own saturation. 1 and 2 give the same bits."""
    if not ((HW_FP8_CVT if hw_cvt is None else hw_cvt) and x.is_cuda):
        return 0
    return 2 if SATURATING_CAST else 1


# Launch choices measured on an H200 at [32760, 8960] bf16 (bench/bench_kernels_quick.py sweeps the alternatives):
# plain quant 0.234 ms looped (two passes, the second from L2) over 1024-wide tiles with 8 warps vs 0.26 ms for the
# best whole-row-in-registers config; GELU+quant 0.34 ms with the whole row in registers and 4 warps vs 0.44 ms
# for the best looped config (which computes the GELU twice).
_LOOP_ABOVE = 4096  # plain quant: rows wider than this loop
_LOOP_CONFIG = {False: dict(BLOCK_K=1024, num_warps=8), True: dict(BLOCK_K=1024, num_warps=4)}


def launch_config(K: int, max_tile: int = _MAX_SINGLE_TILE, gelu: bool = False) -> dict:
    """The fixed launch configuration for rows of width K (a pure function of K and the op: same shape, same code,
    same bits)."""
    if K > max_tile or (K > _LOOP_ABOVE and not gelu):
        block = min(_LOOP_CONFIG[gelu]["BLOCK_K"], max_tile)
        return dict(looped=True, BLOCK_K=block, num_warps=max(1, min(_LOOP_CONFIG[gelu]["num_warps"], block // 128)))
    w1, w2, w3 = row_segments(K)
    width = w1 + w2 + w3
    rows = max(1, min(32, _ROW_ELEMENTS // triton.next_power_of_2(width)))
    elements = rows * width
    num_warps = 4 if elements <= 4096 else 8 if elements <= 12288 else 16
    if gelu and rows == 1:  # the GELU's latency hides better with more, smaller programs per SM
        num_warps = 4 if width <= 10240 else 8
    return dict(looped=False, ROWS=rows, W1=w1, W2=w2, W3=w3, num_warps=num_warps)


def _quantize_rows_triton(x: torch.Tensor, gelu: bool, max_tile: int, config: dict | None = None,
                          hw_cvt: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    if x.dim() != 2:
        raise ValueError(f"expected x [M, K], got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    q = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0 or K == 0:
        return q, scale
    act = _ACT_DTYPES[x.dtype]
    cfg = config or launch_config(K, max_tile, gelu)
    hw = fp8_cast_mode(x, hw_cvt)
    fast = dict(num_warps=cfg["num_warps"], enable_fp_fusion=True)  # pinned: a Triton default may flip
    if cfg["looped"]:
        _quantize_rows_looped_kernel[(M,)](
            x, q, scale, K, x.stride(0), q.stride(0),
            BLOCK_K=cfg["BLOCK_K"], GELU=gelu, ACT_DTYPE=act, HW_CVT=hw, **fast,
        )
    else:
        _quantize_rows_kernel[(triton.cdiv(M, cfg["ROWS"]),)](
            x, q, scale, M, K, x.stride(0), q.stride(0),
            ROWS=cfg["ROWS"], W1=cfg["W1"], W2=cfg["W2"], W3=cfg["W3"], GELU=gelu, ACT_DTYPE=act, HW_CVT=hw, **fast,
        )
    return q, scale


def quantize_per_token_fp8_triton(x: torch.Tensor, *, max_tile: int = _MAX_SINGLE_TILE, config: dict | None = None,
                                  hw_cvt: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton per-token quantization of x [M, K] (CUDA, or CPU under TRITON_INTERPRET=1).

    Fixed launch configuration (`launch_config`, no autotune): the same shape always runs the same code, so
    bits repeat. Rows up to `max_tile` wide stay in registers; wider ones take the looped two-pass kernel
    (tests lower `max_tile` to exercise it). `config` / `hw_cvt` override the defaults (benchmark sweeps only).
    """
    return _quantize_rows_triton(x, False, max_tile, config, hw_cvt)


def quantize_gelu_per_token_fp8_triton(
    x: torch.Tensor, *, max_tile: int = _MAX_SINGLE_TILE, config: dict | None = None, hw_cvt: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused GELU(tanh) + per-token quantization of x [M, K]: one read of x, one write of the fp8 rows.

    Within one e4m3 step of `quantize_gelu_per_token_fp8_ref` (fast exp2 / divide, see the module docstring);
    bitwise repeatable on one device."""
    return _quantize_rows_triton(x, True, max_tile, config, hw_cvt)


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32) -> (x_fp8 [M, K] e4m3fn, x_scale [M] fp32): Triton on CUDA, torch elsewhere."""
    if _use_triton(x):
        return quantize_per_token_fp8_triton(x)
    return quantize_per_token_fp8_ref(x)


def quantize_gelu_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> per-token fp8 of GELU(tanh)(x) (see `gelu_tanh_ref`): Triton on CUDA, torch elsewhere."""
    if _use_triton(x):
        return quantize_gelu_per_token_fp8_triton(x)
    return quantize_gelu_per_token_fp8_ref(x)


# ------------------------------------------------------------------------------------------ linear
def _scaled_mm_supported(device: torch.device) -> bool:
    """Row-wise `_scaled_mm` needs compute capability >= 8.9 (Ada/Hopper and newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_matmul_emulated(
    xq: torch.Tensor, xs: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """`fp8_matmul` in float32 (the CPU path and test oracle): bf16 [M, N]."""
    acc = xq.float() @ w_fp8.float().t()
    y = acc * xs.unsqueeze(1) * w_scale.float().unsqueeze(0)
    if bias is not None:
        y = y + bias.to(torch.bfloat16).float()
    return y.to(torch.bfloat16)


def fp8_matmul(
    xq: torch.Tensor, xs: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None,
    *, use_fast_accum: bool = False,
) -> torch.Tensor:
    """Already-quantized rows xq [M, K] e4m3fn with scales xs [M] times W^T (e4m3fn [N, K], scales [N]) -> bf16 [M, N].

    CUDA sm89+ with K, N multiples of 16: `torch._scaled_mm` (A row-major, B column-major: `w_fp8.t()` of a
    contiguous [N, K] is exactly that; scales [M, 1] / [1, N]; bias fused; bf16 out). Elsewhere: the emulation.
    Lets one quantized activation feed several GEMMs (q, k, v) and the fused GELU+quant feed the FFN down.
    """
    K, N = w_fp8.shape[1], w_fp8.shape[0]
    if not (xq.is_cuda and _scaled_mm_supported(xq.device) and K % 16 == 0 and N % 16 == 0):
        return fp8_matmul_emulated(xq, xs, w_fp8, w_scale, bias)
    return torch._scaled_mm(
        xq,
        w_fp8.t(),
        scale_a=xs.view(-1, 1),
        scale_b=w_scale.view(1, -1),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
        use_fast_accum=use_fast_accum,
    )


def fp8_linear_emulated(
    x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Quantize-dequantize emulation of `fp8_linear` (float32 matmul): CPU path and test oracle."""
    K = x.shape[-1]
    xq, xs = quantize_per_token_fp8_ref(x.reshape(-1, K))
    y = fp8_matmul_emulated(xq, xs, w_fp8, w_scale, bias)
    return y.to(x.dtype).reshape(*x.shape[:-1], w_fp8.shape[0])


def fp8_linear(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """y = x @ W^T + b with W stored as e4m3fn [N, K] + fp32 scale [N]; x is [..., K], y is [..., N] in x.dtype.

    CUDA (sm89+): fused per-token quantization, then `fp8_matmul` (`torch._scaled_mm`). Elsewhere: the float32
    emulation. `use_fast_accum` trades Hopper's periodic fp32 promotion of the accumulator for speed; off here
    (FP8Linear turns it on).
    """
    K = x.shape[-1]
    N = w_fp8.shape[0]
    if w_fp8.dtype != FP8_DTYPE or w_fp8.shape[1] != K:
        raise ValueError(f"fp8_linear: weight must be e4m3fn [N, {K}], got {w_fp8.dtype} {tuple(w_fp8.shape)}")
    if not (x.is_cuda and _scaled_mm_supported(x.device) and K % 16 == 0 and N % 16 == 0):
        return fp8_linear_emulated(x, w_fp8, w_scale, bias)
    xq, xs = quantize_per_token_fp8(x.reshape(-1, K))
    y = fp8_matmul(xq, xs, w_fp8, w_scale, bias, use_fast_accum=use_fast_accum)
    return y.to(x.dtype).view(*x.shape[:-1], N)


class FP8Linear(nn.Module):
    """Drop-in inference replacement for nn.Linear holding an e4m3fn weight and per-output-channel scales.

    Buffers (all in the state dict, so a quantized model saves to safetensors and loads back with no
    re-quantization): `weight` e4m3fn [out, in], `weight_scale` fp32 [out], optional `bias` bf16 [out].
    `use_fast_accum` (default on; only CUDA reads it) is what Hopper FP8 inference stacks run: the GEMM skips the
    periodic fp32 promotion of its accumulator (~15% faster at the DiT's shapes, error well inside fp8's own).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, *,
                 use_fast_accum: bool = True):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.use_fast_accum = use_fast_accum
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=FP8_DTYPE, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=torch.bfloat16, device=device))
        else:
            self.register_buffer("bias", None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, use_fast_accum: bool = True) -> "FP8Linear":
        """Quantize `linear` on its own device (meta stays meta: an empty shell to load a checkpoint into)."""
        w = linear.weight
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device=w.device,
                use_fast_accum=use_fast_accum)
        if w.device.type == "meta":
            return m
        m.weight, m.weight_scale = quantize_weight_fp8(w.detach())
        if linear.bias is not None:
            m.bias = linear.bias.detach().to(torch.bfloat16).clone()
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp8_linear(x, self.weight, self.weight_scale, self.bias, use_fast_accum=self.use_fast_accum)

    def forward_quantized(self, xq: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """The layer on rows already quantized by `quantize_per_token_fp8` (or the GELU variant): bf16 [M, N]."""
        return fp8_matmul(xq, xs, self.weight, self.weight_scale, self.bias, use_fast_accum=self.use_fast_accum)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """W as the GEMM sees it (weight * scale): for error analysis and debugging."""
        return (self.weight.float() * self.weight_scale.unsqueeze(1)).to(dtype)

    def _apply(self, fn, recurse=True):
        """Let `model.to(device)` move the fp8 weight and fp32 scale but never recast them (`model.to(bf16)`
        would round the scales and break `_scaled_mm`); the bias follows the model like any buffer."""
        keep = {id(self.weight), id(self.weight_scale)}

        def move_keeping_dtype(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if id(t) in keep and out.dtype != t.dtype:
                out = t.to(device=out.device)
            return out

        return super()._apply(move_keeping_dtype, recurse)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Refuse a checkpoint whose fp8 weight or fp32 scale was cast on the way in (that would be silent garbage)."""
        for name, want in (("weight", FP8_DTYPE), ("weight_scale", torch.float32)):
            t = state_dict.get(prefix + name)
            if t is not None and t.dtype != want:
                error_msgs.append(
                    f"{prefix}{name}: FP8Linear needs {want}, the state dict has {t.dtype} (a loader cast it? "
                    f"keep float8 tensors and `weight_scale` out of dtype conversion)"
                )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8=e4m3fn"


def fp8_ffn_gelu(x: torch.Tensor, up: FP8Linear, down: FP8Linear) -> torch.Tensor:
    """down(GELU_tanh(up(x))) with the hidden activation never stored in bf16 twice: the up GEMM writes bf16,
    one fused kernel reads it once and writes fp8 rows + scales, the down GEMM reads those. x [..., K] -> x.dtype.

    On any device (CPU: torch references and the float32 GEMM emulation), so it is testable without a GPU.
    """
    h = up(x).reshape(-1, up.out_features)
    return _gelu_down(h, down, x.dtype).view(*x.shape[:-1], down.out_features)


def fp8_ffn_gelu_quantized(
    xq: torch.Tensor, xs: torch.Tensor, up: FP8Linear, down: FP8Linear, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """`fp8_ffn_gelu` on rows already quantized for the up GEMM (xq [M, K] e4m3fn, xs [M] fp32: e.g. by the fused
    LayerNorm-modulate kernel, which never writes the bf16 rows) -> [M, N] in `dtype`, the activation dtype the
    rows were rounded to before quantizing. Same bits as `fp8_ffn_gelu` on those rows: `up(x)` is exactly
    `up.forward_quantized(*quantize_per_token_fp8(x))`."""
    return _gelu_down(up.forward_quantized(xq, xs).to(dtype), down, dtype)


def _gelu_down(h: torch.Tensor, down: FP8Linear, dtype: torch.dtype) -> torch.Tensor:
    """down(GELU(h)) for the up projection's output rows h [M, H]: fused GELU + quantization, then the fp8 GEMM."""
    hq, hs = quantize_gelu_per_token_fp8(h)
    return down.forward_quantized(hq, hs).to(dtype)


__all__ = [
    "FP8_DTYPE", "FP8_MAX", "FP8Linear", "fp8_ffn_gelu", "fp8_ffn_gelu_quantized", "fp8_linear", "fp8_linear_emulated",
    "fp8_matmul", "fp8_matmul_emulated", "gelu_tanh_ref", "launch_config", "quantize_gelu_per_token_fp8",
    "quantize_gelu_per_token_fp8_ref", "quantize_gelu_per_token_fp8_triton", "quantize_weight_fp8",
    "quantize_per_token_fp8", "quantize_per_token_fp8_ref", "quantize_per_token_fp8_triton",
    "quantize_rows_fp8_ref", "row_segments",
]
