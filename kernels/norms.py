"""Fused elementwise kernels for the Wan DiT block: modulated LayerNorm, gated residual, q/k RMSNorm + 3D RoPE.

Why: each of these is several memory-bound torch ops (casts to fp32, norm, multiply, add) over [B, L, C]
activations; fusing them reads and writes each tensor once. `layernorm_modulate_fp8` goes one step further for FP8
Linears: it writes the per-token e4m3 rows + scales that `quantize_per_token_fp8` would make of the bf16 output.

Tiling (`norm_launch_config`): a program owns ROWS consecutive tokens of one batch element (grid (cdiv(L, ROWS), B)),
each row held in registers by whole warps as NSEG equal segments (1536 bf16 = 6 x 256: one warp per row, one 16-byte
vector per thread per segment, no padded lanes), so a row's sums are warp shuffles, every access is 16 bytes wide
and several rows' loads are in flight per SM. Every kernel is deterministic: fixed launch configurations (a pure
function of the shape and dtypes), no atomics, each row reduced in the same fixed order whichever rows share its
program, FMA contraction off.

Each `op` has an `op_ref` beside it that spells out the dtype semantics of the original model code (Wan2.1
`wan/modules/model.py`, TurboDiffusion `rcm/networks/wan2pt1.py`); the Triton version runs on CUDA (or on CPU
under TRITON_INTERPRET=1 via the `*_triton` functions), the public function falls back to the ref elsewhere.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:  # triton is a Linux-only dependency; CPU-only platforms use the torch references
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

from kernels import fp8_linear as fp8

if triton is not None:  # the fused LayerNorm -> fp8 kernel quantizes with the quantize kernel's own helpers
    from kernels.fp8_linear import _fp8_codes, _fp8_row_scale


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _use_triton(t: torch.Tensor) -> bool:
    return triton is not None and (t.is_cuda or _interpreting())


def _per_batch_vector(v: torch.Tensor, B: int, C: int, name: str) -> torch.Tensor:
    """[B, 1, C], [B, C], [1, C] or [C] -> [B, C] contiguous (dtype kept), or a clear error."""
    if v.dim() == 3:
        if v.shape[1] != 1:
            raise ValueError(f"{name}: expected [B, 1, C], got {tuple(v.shape)}")
        v = v[:, 0]
    if v.dim() == 1:
        v = v.unsqueeze(0)
    if v.dim() != 2 or v.shape[-1] != C or v.shape[0] not in (1, B):
        raise ValueError(f"{name}: expected [{B}, 1, {C}] or [{B}, {C}], got {tuple(v.shape)}")
    return v.expand(B, C).contiguous()


def row_tiling(C: int, max_segments: int = 8) -> tuple[int, int]:
    """(SEG, NSEG): a row of C as NSEG equal power-of-two segments (at least 16 wide), fewest padded lanes first,
    then fewest segments: 1536 -> (512, 3), 5120 -> (1024, 5), 96 -> (32, 3). The tiling of rows narrower than a
    warp's 16-byte vectors (`norm_launch_config` splits wider rows by warps).

    Why equal segments: one next_pow2(C) tile pads 1536 to 2048 (25% of the registers and lanes idle), and
    unequal segments (1024 + 512) get different register layouts, so every per-row statistic would be shuffled
    through shared memory between them."""
    best = None
    seg = 16
    while True:
        nseg = -(-C // seg)
        if nseg <= max_segments:
            best = min(best or (seg * nseg - C, nseg, seg), (seg * nseg - C, nseg, seg))
        if seg >= C:
            return best[2], best[1]
        seg *= 2


# Launch choices (sm_90 code checked with ptxas; timings: bench/bench_norms.py). A program owns ROWS rows and a row is
# owned by whole warps: a segment is SEG = 32 lanes x one 16-byte vector x warps_per_row columns (256 bf16 for one
# warp), so each thread holds exactly one vector of each segment of its row. That gives: per-row sums as warp
# shuffles only (no shared memory, no barrier) while a row fits one warp (up to 64 values per thread: C <= 2048
# bf16); every load and store 16 bytes wide; shift/scale loaded once per warp for its row; and one fixed register
# layout whatever else the kernel stores (the fp8 variant's 1-byte stores cannot widen it), so
# `layernorm_modulate_fp8` reduces exactly like `layernorm_modulate`. The old one-row programs (8 warps sharing a
# 2048-lane tile, three barriers, the fp32 vectors fetched only after the reductions) kept ~8 rows in flight per SM.
_VALUES_PER_THREAD = 64  # most values of one row a thread holds (48 at C = 1536: 79-105 registers, no spills)
_MIN_WARPS = 4


def norm_launch_config(C: int, elem_bytes: int = 2) -> dict:
    """The fixed launch configuration of the norm kernels for rows of C elements stored with `elem_bytes` each (the
    stores are at most 16 bytes per thread, so they set the vector width; the loads follow). A pure function of the
    shape and dtypes: the same call always runs the same code and reduces in the same order, so its bits repeat.

    1536 bf16 -> 4 rows x 6 segments of 256, 4 warps (a warp per row); 5120 bf16 -> 1 row x 5 x 1024, 4 warps."""
    vec = 16 // elem_bytes
    if C < 32 * vec:  # narrow rows (toy models, tests): equal segments, at most one vector per thread per segment
        seg, nseg = row_tiling(C)
        return {"ROWS": min(16, 32 * vec * _MIN_WARPS // seg), "SEG": seg, "NSEG": nseg, "num_warps": _MIN_WARPS}
    warps_per_row = triton.next_power_of_2(-(-C // (32 * _VALUES_PER_THREAD)))
    seg = 32 * vec * warps_per_row
    num_warps = max(_MIN_WARPS, warps_per_row)
    return {"ROWS": num_warps // warps_per_row, "SEG": seg, "NSEG": -(-C // seg), "num_warps": num_warps}


def old_launch_config(C: int) -> dict:
    """The launch before the 2-D tiling (one row per program, one next_pow2(C) tile, 8 warps at C = 1536): kept only
    so benchmarks can show what the tiling buys (`config=old_launch_config(C)`)."""
    block = triton.next_power_of_2(C)
    return {"ROWS": 1, "SEG": block, "NSEG": 1, "num_warps": max(1, min(16, block // 256))}


def _launch(config: dict | None, C: int, stored: torch.dtype) -> tuple[dict, dict]:
    """(kernel constexprs, launch options) from `config` (benchmark override) or the default for rows of C elements
    stored as `stored`."""
    cfg = dict(config or norm_launch_config(C, stored.itemsize))
    num_warps = cfg.pop("num_warps")
    return cfg, {"num_warps": num_warps, "enable_fp_fusion": False}


HW_ROUNDING = True  # on a GPU, round to bf16 with the hardware cast (the integer path gives the same bits)
_TL_DTYPE = {}
if triton is not None:
    _TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


if triton is not None:

    @triton.jit
    def _round_fp32(v, DTYPE: tl.constexpr, HW: tl.constexpr):
        """Round fp32 v to DTYPE's grid (ties to even) and return it as fp32, so casting it afterwards is exact.

        HW (on a GPU): the hardware cast there and back (`cvt.rn.bf16.f32`, then a shift). Else bf16
        is rounded by integer ops, the same bits for every finite value, and also correct under TRITON_INTERPRET=1,
        whose fp32->bf16 cast truncates; these norms are issue-bound at the DiT's shapes, so the 4-5 integer ops a
        value cost time (`bench/bench_norms.py`). fp16 uses the plain cast (exact on GPU only).
        """
        if HW and DTYPE != tl.float32:
            return v.to(DTYPE).to(tl.float32)
        if DTYPE == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        elif DTYPE == tl.float16:
            return v.to(tl.float16).to(tl.float32)
        else:
            return v

    @triton.jit
    def _row_block(L, ROWS: tl.constexpr):
        """This program's rows: ROWS consecutive tokens of batch element program_id(1). Returns the flat index of
        the first row (int64, for the base pointers), the row offsets 0..ROWS-1, their positions in the sequence
        and the mask of rows that exist."""
        l0 = tl.program_id(0) * ROWS
        r = tl.arange(0, ROWS)
        return tl.program_id(1).to(tl.int64) * L + l0, r, l0 + r, l0 + r < L

    @triton.jit
    def _segment(i: tl.constexpr, r, rmask, C, SEG: tl.constexpr):
        """Segment i of the rows: its columns, their mask, the [ROWS, SEG] offsets from the first row (int32:
        ROWS * C is small) and the 2-D mask."""
        cols = i * SEG + tl.arange(0, SEG)
        cmask = cols < C
        return cols, cmask, r[:, None] * C + cols[None, :], rmask[:, None] & cmask[None, :]

    @triton.jit
    def _load_row_vector(ptr, cols, cmask, r):
        """A per-column vector (shift, scale, weight, gate) as a [ROWS, SEG] tile, every row the same: loaded through
        a row-broadcast pointer tile so Triton gives it the layout of the row tiles it multiplies (a 1-D load gets
        its own layout and a round trip through shared memory per segment); the repeats hit L1."""
        rows0 = r[:, None] * 0
        return tl.load(ptr + rows0 + cols[None, :], mask=(rows0 == 0) & cmask[None, :], other=0.0).to(tl.float32)

    @triton.jit
    def _row_sum(tiles, NSEG: tl.constexpr, SQUARES: tl.constexpr):
        """Per-row sum over the segments (of the squares if SQUARES): the segments are added lane by lane in order,
        then one tree reduction per row (one cross-warp step where a row spans warps, not one per segment). The
        order depends only on the launch configuration, never on which rows share a program."""
        for i in tl.static_range(NSEG):
            v = tiles[i] * tiles[i] if SQUARES else tiles[i]
            if i == 0:
                acc = v
            else:
                acc = acc + v
        return tl.sum(acc, axis=1)

    @triton.jit
    def _load_rows(x_ptr, r, rmask, C, SEG: tl.constexpr, NSEG: tl.constexpr, SQUARES: tl.constexpr):
        """The rows' NSEG segments as fp32 (a tuple of [ROWS, SEG] tiles, masked lanes 0) and each row's sum of the
        values (or of their squares): see `_row_sum`."""
        tiles = ()
        for i in tl.static_range(NSEG):
            _, _, offs, mask = _segment(i, r, rmask, C, SEG)
            tiles = tiles + (tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32),)
        return tiles, _row_sum(tiles, NSEG, SQUARES)


# =========================================================================================== layernorm_modulate
def layernorm_modulate_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """LayerNorm(x) (no affine, fp32 math, rounded to x.dtype like WanLayerNorm) * (1 + scale) + shift.

    Mirrors `(norm1(x).float() * (1 + e[1]) + e[0]).type_as(x)`: shift/scale are the fp32 modulation
    vectors; the result is rounded once to `out_dtype` (default x.dtype; pass bf16 to feed a Linear directly
    from an fp32 residual stream, which is the rounding autocast would apply).
    """
    B, L, C = x.shape
    shift = _per_batch_vector(shift, B, C, "shift").float()[:, None]
    scale = _per_batch_vector(scale, B, C, "scale").float()[:, None]
    n = F.layer_norm(x.float(), (C,), eps=eps).to(x.dtype)
    return (n.float() * (1 + scale) + shift).to(out_dtype or x.dtype)


if triton is not None:

    @triton.jit
    def _layernorm_modulate_kernel(
        x_ptr, shift_ptr, scale_ptr, out_ptr, qscale_ptr, L, C, eps,
        ROWS: tl.constexpr, SEG: tl.constexpr, NSEG: tl.constexpr, NORM_DTYPE: tl.constexpr,
        OUT_DTYPE: tl.constexpr, ONE_PLUS: tl.constexpr, FP8: tl.constexpr, HW_CVT: tl.constexpr,
        HW_ROUND: tl.constexpr, EVEN_C: tl.constexpr,
    ):
        """ROWS token rows of one batch element per program, each row in registers (two-pass mean/variance).
        ONE_PLUS: AdaLN modulation n * (1 + scale) + shift; else an affine LayerNorm n * weight + bias.
        FP8: the output, rounded to OUT_DTYPE, is quantized per row instead of stored (out_ptr is e4m3fn, the row
        scales go to qscale_ptr): `quantize_per_token_fp8`'s math on exactly the values the plain kernel stores."""
        first, r, _, rmask = _row_block(L, ROWS)
        x_ptr += first * C
        out_ptr += first * C
        vec = tl.program_id(1).to(tl.int64) * C  # this batch element's shift / scale (or bias / weight)
        xs, total = _load_rows(x_ptr, r, rmask, C, SEG, NSEG, False)
        mean = total / C
        ds = ()
        for i in tl.static_range(NSEG):
            _, cmask, _, _ = _segment(i, r, rmask, C, SEG)
            if EVEN_C:  # every column real; a row past L is all zeros with mean 0 already
                ds = ds + (xs[i] - mean[:, None],)
            else:
                ds = ds + (tl.where(cmask[None, :], xs[i] - mean[:, None], 0.0),)
        var = _row_sum(ds, NSEG, True) / C
        rstd = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), tl.math.sqrt_rn(var + eps))
        ys = ()
        for i in tl.static_range(NSEG):
            cols, cmask, offs, mask = _segment(i, r, rmask, C, SEG)
            n = _round_fp32(ds[i] * rstd[:, None], NORM_DTYPE, HW_ROUND)
            sc = _load_row_vector(scale_ptr + vec, cols, cmask, r)
            sh = _load_row_vector(shift_ptr + vec, cols, cmask, r)
            if ONE_PLUS:
                y = n * (1.0 + sc) + sh
            else:
                y = n * sc + sh
            y = _round_fp32(y, OUT_DTYPE, HW_ROUND)
            if FP8:
                ys = ys + (y,)
                a = tl.abs(y)  # 0 in the columns past C (d, scale and shift are 0 there); rows past L not stored
                if i == 0:
                    amax = a
                else:
                    amax = tl.maximum(amax, a)
            else:
                tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)
        if FP8:
            qscale, inv = _fp8_row_scale(tl.max(amax, axis=1))
            tl.store(qscale_ptr + first + r, qscale, mask=rmask)
            for i in tl.static_range(NSEG):
                _, _, offs, mask = _segment(i, r, rmask, C, SEG)
                tl.store(out_ptr + offs, _fp8_codes(ys[i], inv, out_ptr.dtype.element_ty, HW_CVT), mask=mask)


def _layernorm_launch(x, shift_or_bias, scale_or_weight, out, qscale, eps, *, norm_dtype, one_plus, config,
                      hw_cvt=False):
    """Launch `_layernorm_modulate_kernel` over x [B, L, C] (contiguous; the vectors [B, C], fp32 or the
    model dtype: the kernel widens them)."""
    B, L, C = x.shape
    quantize = qscale is not None
    consts, opts = _launch(config, C, x.dtype if quantize else out.dtype)  # fp8: the plain kernel's layout
    _layernorm_modulate_kernel[(triton.cdiv(L, consts["ROWS"]), B)](
        x, shift_or_bias, scale_or_weight, out, qscale if quantize else out, L, C, eps,
        **consts, NORM_DTYPE=_TL_DTYPE[norm_dtype], OUT_DTYPE=_TL_DTYPE[x.dtype if quantize else out.dtype],
        ONE_PLUS=one_plus, FP8=quantize, HW_CVT=hw_cvt, HW_ROUND=HW_ROUNDING and x.is_cuda,
        EVEN_C=consts["NSEG"] * consts["SEG"] == C, **opts,
    )


def layernorm_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    out_dtype: torch.dtype | None = None, *, config: dict | None = None,
) -> torch.Tensor:
    """Triton `layernorm_modulate` (one read of x, one write of the output); `config` overrides the launch
    (benchmarks only: e.g. `old_launch_config(C)`)."""
    B, L, C = x.shape
    x = x.contiguous()
    shift = _per_batch_vector(shift, B, C, "shift").float()
    scale = _per_batch_vector(scale, B, C, "scale").float()
    out = torch.empty((B, L, C), dtype=out_dtype or x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    _layernorm_launch(x, shift, scale, out, None, eps, norm_dtype=x.dtype, one_plus=True, config=config)
    return out


def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x [B, L, C]; shift, scale [B, 1, C] or [B, C] (fp32) -> LN(x) * (1 + scale) + shift in out_dtype."""
    if _use_triton(x):
        return layernorm_modulate_triton(x, shift, scale, eps, out_dtype)
    return layernorm_modulate_ref(x, shift, scale, eps, out_dtype)


# =========================================================================================== layernorm_modulate_fp8
def layernorm_modulate_fp8_ref(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The composition the fused kernel replaces: `layernorm_modulate` rounded to x.dtype, then per-token e4m3
    quantization of its rows -> (xq [B*L, C] e4m3fn, xs [B*L] fp32)."""
    return fp8.quantize_per_token_fp8_ref(layernorm_modulate_ref(x, shift, scale, eps).reshape(-1, x.shape[-1]))


def layernorm_modulate_fp8_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6, *,
    config: dict | None = None, hw_cvt: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `layernorm_modulate` + `quantize_per_token_fp8`: reads x once and writes 1-byte rows + scales instead of
    writing bf16 rows that the quantize kernel reads back. Same kernel and launch as `layernorm_modulate_triton`,
    so the same reductions in the same order: bit for bit the composition of the two kernels."""
    B, _, C = x.shape
    shift = _per_batch_vector(shift, B, C, "shift").float()
    scale = _per_batch_vector(scale, B, C, "scale").float()
    return _layernorm_fp8_launch(x, shift, scale, eps, norm_dtype=x.dtype, one_plus=True, config=config,
                                 hw_cvt=hw_cvt)


def _layernorm_fp8_launch(x, shift_or_bias, scale_or_weight, eps, *, norm_dtype, one_plus, config, hw_cvt):
    """The LayerNorm kernel writing per-token fp8 rows: (xq [B*L, C] e4m3fn, xs [B*L] fp32)."""
    B, L, C = x.shape
    x = x.contiguous()
    xq = torch.empty((B * L, C), dtype=fp8.FP8_DTYPE, device=x.device)
    xs = torch.empty((B * L,), dtype=torch.float32, device=x.device)
    if x.numel() == 0:
        return xq, xs
    hw = fp8.fp8_cast_mode(x, hw_cvt)
    _layernorm_launch(x, shift_or_bias, scale_or_weight, xq, xs, eps, norm_dtype=norm_dtype, one_plus=one_plus,
                      config=config, hw_cvt=hw)
    return xq, xs


def layernorm_modulate_fp8(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, C] -> per-token fp8 rows of LN(x) * (1 + scale) + shift (rounded to x.dtype first):
    (xq [B*L, C] e4m3fn, xs [B*L] fp32), exactly `quantize_per_token_fp8(layernorm_modulate(...).reshape(-1, C))`.
    One fused kernel where Triton's fp8 casts run (sm89+, or the interpreter); the composition elsewhere."""
    if fp8._use_triton(x):
        return layernorm_modulate_fp8_triton(x, shift, scale, eps)
    return fp8.quantize_per_token_fp8(layernorm_modulate(x, shift, scale, eps).reshape(-1, x.shape[-1]))


# =========================================================================================== layernorm_affine
def layernorm_affine_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """WanLayerNorm with elementwise affine (the cross-attention's norm3): fp32 math, one rounding to x.dtype."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)


def layernorm_affine_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, *, config: dict | None = None
) -> torch.Tensor:
    """Triton `layernorm_affine`: the modulate kernel with (weight, bias) for (scale, shift) and no rounding of
    the normalized value before the affine (F.layer_norm rounds once, at the end)."""
    B, _, C = x.shape
    x = x.contiguous()
    w = _per_batch_vector(weight, B, C, "weight")  # any float dtype: the kernel widens it to fp32 (exact)
    b = _per_batch_vector(bias, B, C, "bias")
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    _layernorm_launch(x, b, w, out, None, eps, norm_dtype=torch.float32, one_plus=False, config=config)
    return out


def layernorm_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x [B, L, C]; weight, bias [C] -> LayerNorm(x) * weight + bias in x.dtype (fp32 inside)."""
    if _use_triton(x):
        return layernorm_affine_triton(x, weight, bias, eps)
    return layernorm_affine_ref(x, weight, bias, eps)


# =========================================================================================== layernorm_affine_fp8
def layernorm_affine_fp8_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The composition the fused kernel replaces: `layernorm_affine` (rounded to x.dtype), then per-token e4m3
    quantization of its rows -> (xq [B*L, C] e4m3fn, xs [B*L] fp32)."""
    return fp8.quantize_per_token_fp8_ref(layernorm_affine_ref(x, weight, bias, eps).reshape(-1, x.shape[-1]))


def layernorm_affine_fp8_triton(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6, *,
    config: dict | None = None, hw_cvt: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused `layernorm_affine` + `quantize_per_token_fp8` (the cross-attention's norm3 in front of its FP8 q
    projection): one read of x, 1-byte rows + scales out. Same kernel and launch as `layernorm_affine_triton`, so
    bit for bit the composition of the two kernels."""
    B, _, C = x.shape
    w = _per_batch_vector(weight, B, C, "weight")  # widened to fp32 in the kernel: no conversion launch per call
    b = _per_batch_vector(bias, B, C, "bias")
    return _layernorm_fp8_launch(x, b, w, eps, norm_dtype=torch.float32, one_plus=False, config=config, hw_cvt=hw_cvt)


def layernorm_affine_fp8(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, C] -> per-token fp8 rows of LayerNorm(x) * weight + bias (rounded to x.dtype first): exactly
    `quantize_per_token_fp8(layernorm_affine(...).reshape(-1, C))`, in one kernel where Triton's fp8 casts run."""
    if fp8._use_triton(x):
        return layernorm_affine_fp8_triton(x, weight, bias, eps)
    return fp8.quantize_per_token_fp8(layernorm_affine(x, weight, bias, eps).reshape(-1, x.shape[-1]))


# =========================================================================================== gated_residual
def gated_residual_ref(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate with torch's type promotion: exactly what the model code writes.

    Wan2.1: `x = x + y * e[2]` with e fp32 -> the product and the sum are fp32 (the residual stream becomes
    fp32). TurboDiffusion: `x = x + y * e[2].type_as(x)` -> with bf16 x, the product is rounded to bf16, then
    the sum. The caller picks the convention by the gate dtype it passes; the fused kernel reproduces both
    bit for bit (product rounded to promote(y, gate), sum to promote(x, that)).
    """
    if gate.dim() == 2:
        gate = gate.unsqueeze(1)
    return x + y * gate


if triton is not None:

    @triton.jit
    def _gated_residual_kernel(
        x_ptr, y_ptr, g_ptr, out_ptr, L, C,
        ROWS: tl.constexpr, SEG: tl.constexpr, NSEG: tl.constexpr, PROD_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr,
        HW_ROUND: tl.constexpr,
    ):
        """ROWS rows of one batch element per program, segment by segment, the gate indexed by column (the flat
        tiling this replaced found each element's gate with int64 divisions, ahead of its loads)."""
        first, r, _, rmask = _row_block(L, ROWS)
        base = first * C
        vec = tl.program_id(1).to(tl.int64) * C
        for i in tl.static_range(NSEG):
            cols, cmask, offs, mask = _segment(i, r, rmask, C, SEG)
            x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
            g = _load_row_vector(g_ptr + vec, cols, cmask, r)
            p = _round_fp32(y * g, PROD_DTYPE, HW_ROUND)
            out = _round_fp32(x + p, OUT_DTYPE, HW_ROUND)
            tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def gated_residual_triton(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None = None, *,
    config: dict | None = None,
) -> torch.Tensor:
    """Triton `gated_residual`; `out=x` updates the residual stream in place (each element read before written)."""
    B, L, C = x.shape
    if y.shape != x.shape:
        raise ValueError(f"gated_residual: y {tuple(y.shape)} must match x {tuple(x.shape)}")
    g = _per_batch_vector(gate, B, C, "gate")
    prod_dtype = torch.promote_types(y.dtype, g.dtype)
    out_dtype = torch.promote_types(x.dtype, prod_dtype)
    x, y = x.contiguous(), y.contiguous()
    if out is None:
        out = torch.empty((B, L, C), dtype=out_dtype, device=x.device)
    elif out.shape != x.shape or out.dtype != out_dtype or not out.is_contiguous():
        raise ValueError(f"gated_residual: out must be a contiguous {out_dtype} {tuple(x.shape)} tensor")
    if x.numel() == 0:
        return out
    consts, opts = _launch(config, C, out.dtype)  # the norms' tiling: 12+ independent 16-byte loads per thread
    _gated_residual_kernel[(triton.cdiv(L, consts["ROWS"]), B)](
        x, y, g, out, L, C, **consts, PROD_DTYPE=_TL_DTYPE[prod_dtype], OUT_DTYPE=_TL_DTYPE[out_dtype],
        HW_ROUND=HW_ROUNDING and x.is_cuda, **opts,
    )
    return out


def gated_residual(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x, y [B, L, C]; gate [B, 1, C] or [B, C] -> x + y * gate (torch promotion; see `gated_residual_ref`)."""
    if _use_triton(x):
        return gated_residual_triton(x, y, gate, out)
    r = gated_residual_ref(x, y, gate)
    return r if out is None else out.copy_(r)


# =========================================================================================== rmsnorm_rope
def rope_cos_sin(
    frames: int, height: int, width: int, head_dim: int, theta: float = 10000.0, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token cos/sin tables [F*H*W, head_dim/2] (fp32) for Wan's 3D RoPE, tokens in (t, h, w) raster order.

    The head_dim/2 rotation pairs split into t/h/w groups of c - 2*(c//3), c//3, c//3 (c = head_dim/2; 22/21/21
    for head_dim 128); each group uses freq_j = theta^(-2j/dim_group) of its own axis position, as Wan's
    `rope_params`. Angles and cos/sin are computed in float64 (like Wan's `rope_apply`), then rounded to fp32.
    """
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    c = head_dim // 2
    parts = (c - 2 * (c // 3), c // 3, c // 3)

    def axis_angles(n: int, pairs: int) -> torch.Tensor:
        dim = 2 * pairs
        freqs = 1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        return torch.outer(torch.arange(n, dtype=torch.float64), freqs)

    t, h, w = (axis_angles(n, p) for n, p in zip((frames, height, width), parts))
    angles = torch.cat([
        t[:, None, None, :].expand(frames, height, width, parts[0]),
        h[None, :, None, :].expand(frames, height, width, parts[1]),
        w[None, None, :, :].expand(frames, height, width, parts[2]),
    ], dim=-1).reshape(frames * height * width, c)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rmsnorm_rope_ref(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
    eps: float = 1e-6, out_dtype: torch.dtype | None = None, weight_in_fp32: bool = False,
) -> torch.Tensor:
    """RMSNorm over the full H*D dim, then RoPE on interleaved pairs per head: [B, L, H*D] -> [B, L, H, D].

    Default: WanRMSNorm's `_norm(x.float()).type_as(x) * weight` (rounded to x.dtype before the weight; the
    product takes torch's promotion: fp32 with Wan's fp32 weight, bf16 with TurboDiffusion's bf16 model).
    `weight_in_fp32=True`: `(norm(x) * weight.float()).to(x.dtype)`, one rounding (turbo_batch dit.RMSNorm).
    Then rope in fp32 as TurboDiffusion's `rope_apply` (o_re = re*cos - im*sin, o_im = re*sin + im*cos);
    output in out_dtype (default x.dtype).
    """
    B, L, HD = x.shape
    D = HD // num_heads
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    n = (n * weight.float()).to(x.dtype) if weight_in_fp32 else n.to(x.dtype) * weight
    n = n.float().view(B, L, num_heads, D // 2, 2)
    re, im = n[..., 0], n[..., 1]
    c, s = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    o = torch.stack([re * c - im * s, re * s + im * c], dim=-1)
    return o.view(B, L, num_heads, D).to(out_dtype or x.dtype)


if triton is not None:

    @triton.jit
    def _rope_rotate(n, c, s, ROWS: tl.constexpr, SEG: tl.constexpr):
        """Rotate the interleaved pairs (n[2p], n[2p+1]) of a [ROWS, SEG] tile by [ROWS, SEG/2] cos/sin, in fp32:
        o_re = re*c - im*s, o_im = re*s + im*c (the pair stays in one thread: no data moves between threads)."""
        re, im = tl.split(tl.reshape(n, [ROWS, SEG // 2, 2]))
        return tl.reshape(tl.join(re * c - im * s, re * s + im * c), [ROWS, SEG])

    @triton.jit
    def _rope_tables(cos_ptr, sin_ptr, pos, rmask, HP, i: tl.constexpr, SEG: tl.constexpr, HALF_D: tl.constexpr):
        """cos/sin [ROWS, SEG/2] of segment i's pairs (pair p of the row uses column p % HALF_D of its token's row
        of the tables; HP = pairs per row)."""
        pair = i * (SEG // 2) + tl.arange(0, SEG // 2)
        offs = pos[:, None] * HALF_D + (pair % HALF_D)[None, :]
        mask = rmask[:, None] & (pair < HP)[None, :]
        return tl.load(cos_ptr + offs, mask=mask, other=0.0), tl.load(sin_ptr + offs, mask=mask, other=0.0)

    @triton.jit
    def _rmsnorm_rope_kernel(
        x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, L, HD, eps,
        ROWS: tl.constexpr, SEG: tl.constexpr, NSEG: tl.constexpr, HALF_D: tl.constexpr,
        NORM_DTYPE: tl.constexpr, WPROD_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, ROPE: tl.constexpr,
        HW_ROUND: tl.constexpr,
    ):
        """ROWS token rows per program: sum of squares, normalize, weight, rotate pairs (if ROPE), store [H, D].
        When a segment holds whole heads (SEG/2 a multiple of HALF_D), every segment uses the same cos/sin columns:
        they load once per program."""
        first, r, pos, rmask = _row_block(L, ROWS)
        x_ptr += first * HD
        out_ptr += first * HD
        xs, sq = _load_rows(x_ptr, r, rmask, HD, SEG, NSEG, True)
        rr = tl.math.div_rn(tl.full([ROWS], 1.0, tl.float32), tl.math.sqrt_rn(sq / HD + eps))
        SHARED_TABLES: tl.constexpr = (SEG // 2) % HALF_D == 0
        if ROPE and SHARED_TABLES:
            c, s = _rope_tables(cos_ptr, sin_ptr, pos, rmask, HD // 2, 0, SEG, HALF_D)
        for i in tl.static_range(NSEG):
            cols, cmask, offs, mask = _segment(i, r, rmask, HD, SEG)
            n = _round_fp32(xs[i] * rr[:, None], NORM_DTYPE, HW_ROUND)
            w = _load_row_vector(w_ptr, cols, cmask, r)
            n = _round_fp32(n * w, WPROD_DTYPE, HW_ROUND)
            if ROPE:
                if not SHARED_TABLES:
                    c, s = _rope_tables(cos_ptr, sin_ptr, pos, rmask, HD // 2, i, SEG, HALF_D)
                n = _rope_rotate(n, c, s, ROWS, SEG)
            tl.store(out_ptr + offs, _round_fp32(n, OUT_DTYPE, HW_ROUND).to(out_ptr.dtype.element_ty), mask=mask)


def _rmsnorm_dtypes(x: torch.Tensor, weight: torch.Tensor, weight_in_fp32: bool) -> tuple[torch.dtype, torch.dtype]:
    """(dtype the normalized value is rounded to, dtype of the weight product)."""
    if weight_in_fp32:  # round once, after the weight
        return torch.float32, x.dtype
    return x.dtype, torch.promote_types(x.dtype, weight.dtype)  # round to x.dtype, then the promoted product


def _rmsnorm_launch(x, weight, cos, sin, out, eps, half_d, rope, weight_in_fp32, config):
    B, L, C = x.shape
    norm_dtype, wprod_dtype = _rmsnorm_dtypes(x, weight, weight_in_fp32)
    consts, opts = _launch(config, C, out.dtype)
    _rmsnorm_rope_kernel[(triton.cdiv(L, consts["ROWS"]), B)](
        x, weight.contiguous(), cos, sin, out, L, C, eps, **consts, HALF_D=half_d,
        NORM_DTYPE=_TL_DTYPE[norm_dtype], WPROD_DTYPE=_TL_DTYPE[wprod_dtype], OUT_DTYPE=_TL_DTYPE[out.dtype],
        ROPE=rope, HW_ROUND=HW_ROUNDING and x.is_cuda, **opts,
    )


def rmsnorm_rope_triton(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
    eps: float = 1e-6, out_dtype: torch.dtype | None = None, weight_in_fp32: bool = False, *,
    config: dict | None = None,
) -> torch.Tensor:
    """Triton `rmsnorm_rope`: reads x once, writes the rotated [B, L, H, D] once."""
    B, L, HD = x.shape
    D = HD // num_heads
    if D * num_heads != HD or D % 2:
        raise ValueError(f"rmsnorm_rope: {HD} is not num_heads={num_heads} x an even head_dim")
    if cos.shape != (L, D // 2) or sin.shape != (L, D // 2):
        raise ValueError(f"rmsnorm_rope: cos/sin must be [{L}, {D // 2}], got {tuple(cos.shape)}, {tuple(sin.shape)}")
    x = x.contiguous()
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    out = torch.empty((B, L, num_heads, D), dtype=out_dtype or x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    _rmsnorm_launch(x, weight, cos, sin, out, eps, D // 2, True, weight_in_fp32, config)
    return out


def rmsnorm_rope(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
    eps: float = 1e-6, out_dtype: torch.dtype | None = None, weight_in_fp32: bool = False,
) -> torch.Tensor:
    """x [B, L, H*D], weight [H*D], cos/sin [L, D/2] fp32 (see `rope_cos_sin`) -> [B, L, H, D]."""
    if _use_triton(x):
        return rmsnorm_rope_triton(x, weight, cos, sin, num_heads, eps, out_dtype, weight_in_fp32)
    return rmsnorm_rope_ref(x, weight, cos, sin, num_heads, eps, out_dtype, weight_in_fp32)


# =========================================================================================== rmsnorm
def rmsnorm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None,
    weight_in_fp32: bool = False,
) -> torch.Tensor:
    """`rmsnorm_rope_ref` without the rotation, [B, L, C] -> [B, L, C] (the cross-attention's q/k norms)."""
    xf = x.float()
    n = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    n = (n * weight.float()).to(x.dtype) if weight_in_fp32 else n.to(x.dtype) * weight
    return n if out_dtype is None else n.to(out_dtype)


def rmsnorm_triton(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None,
    weight_in_fp32: bool = False, *, config: dict | None = None,
) -> torch.Tensor:
    """Triton `rmsnorm` (the rmsnorm_rope kernel with the rotation compiled out)."""
    B, L, C = x.shape
    x = x.contiguous()
    out = torch.empty((B, L, C), dtype=out_dtype or _rmsnorm_dtypes(x, weight, weight_in_fp32)[1], device=x.device)
    if x.numel() == 0:
        return out
    _rmsnorm_launch(x, weight, x, x, out, eps, 1, False, weight_in_fp32, config)
    return out


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6, out_dtype: torch.dtype | None = None,
    weight_in_fp32: bool = False,
) -> torch.Tensor:
    """x [B, L, C], weight [C] -> RMSNorm over C (WanRMSNorm rounding by default; see `rmsnorm_rope_ref`)."""
    if _use_triton(x):
        return rmsnorm_triton(x, weight, eps, out_dtype, weight_in_fp32)
    return rmsnorm_ref(x, weight, eps, out_dtype, weight_in_fp32)


__all__ = [
    "layernorm_affine", "layernorm_affine_ref", "layernorm_affine_triton", "rmsnorm", "rmsnorm_ref", "rmsnorm_triton",
    "layernorm_modulate", "layernorm_modulate_ref", "layernorm_modulate_triton",
    "layernorm_modulate_fp8", "layernorm_modulate_fp8_ref", "layernorm_modulate_fp8_triton",
    "norm_launch_config", "old_launch_config", "row_tiling",
    "gated_residual", "gated_residual_ref", "gated_residual_triton",
    "rmsnorm_rope", "rmsnorm_rope_ref", "rmsnorm_rope_triton", "rope_cos_sin",
]
