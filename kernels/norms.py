"""Fused elementwise kernels for the Wan DiT block: modulated LayerNorm, gated residual, q/k RMSNorm + 3D RoPE.

Why: each of these is several memory-bound torch ops (casts to fp32, norm, multiply, add) over [B, L, C]
activations; fusing them reads and writes each tensor once. Every kernel is deterministic: one program per
row (or a fixed flat tiling), no atomics, fixed launch configurations, FMA contraction off.

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


def _num_warps(block: int) -> int:
    return max(1, min(16, block // 256))


_TL_DTYPE = {}
if triton is not None:
    _TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


if triton is not None:

    @triton.jit
    def _round_fp32(v, DTYPE: tl.constexpr):
        """Round fp32 v to DTYPE's grid (ties to even) and return it as fp32, so casting it afterwards is exact.

        bf16 is rounded by integer ops: identical to the GPU's `cvt.rn.bf16.f32`, and also correct under
        TRITON_INTERPRET=1, whose fp32->bf16 cast truncates. fp16 uses the plain cast (exact on GPU only).
        """
        if DTYPE == tl.bfloat16:
            bits = v.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            return bits.to(tl.float32, bitcast=True)
        elif DTYPE == tl.float16:
            return v.to(tl.float16).to(tl.float32)
        else:
            return v


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
        x_ptr, shift_ptr, scale_ptr, out_ptr, L, C, eps,
        BLOCK_C: tl.constexpr, NORM_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr, ONE_PLUS: tl.constexpr,
    ):
        """One program per token row; the whole row lives in registers (two-pass mean/variance).
        ONE_PLUS: AdaLN modulation n * (1 + scale) + shift; else an affine LayerNorm n * weight + bias."""
        row = tl.program_id(0).to(tl.int64)
        b = row // L
        cols = tl.arange(0, BLOCK_C)
        mask = cols < C
        x = tl.load(x_ptr + row * C + cols, mask=mask, other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=0) / C
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(d * d, axis=0) / C
        rstd = tl.math.div_rn(tl.full([], 1.0, tl.float32), tl.math.sqrt_rn(var + eps))
        n = _round_fp32(d * rstd, NORM_DTYPE)
        sc = tl.load(scale_ptr + b * C + cols, mask=mask, other=0.0)
        sh = tl.load(shift_ptr + b * C + cols, mask=mask, other=0.0)
        if ONE_PLUS:
            y = n * (1.0 + sc) + sh
        else:
            y = n * sc + sh
        tl.store(out_ptr + row * C + cols, _round_fp32(y, OUT_DTYPE).to(out_ptr.dtype.element_ty), mask=mask)


def layernorm_modulate_triton(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Triton `layernorm_modulate` (one read of x, one write of the output)."""
    B, L, C = x.shape
    x = x.contiguous()
    shift = _per_batch_vector(shift, B, C, "shift").float()
    scale = _per_batch_vector(scale, B, C, "scale").float()
    out = torch.empty((B, L, C), dtype=out_dtype or x.dtype, device=x.device)
    if x.numel() == 0:
        return out
    block = triton.next_power_of_2(C)
    _layernorm_modulate_kernel[(B * L,)](
        x, shift, scale, out, L, C, eps,
        BLOCK_C=block, NORM_DTYPE=_TL_DTYPE[x.dtype], OUT_DTYPE=_TL_DTYPE[out.dtype], ONE_PLUS=True,
        num_warps=_num_warps(block), enable_fp_fusion=False,
    )
    return out


def layernorm_modulate(
    x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """x [B, L, C]; shift, scale [B, 1, C] or [B, C] (fp32) -> LN(x) * (1 + scale) + shift in out_dtype."""
    if _use_triton(x):
        return layernorm_modulate_triton(x, shift, scale, eps, out_dtype)
    return layernorm_modulate_ref(x, shift, scale, eps, out_dtype)


# =========================================================================================== layernorm_affine
def layernorm_affine_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """WanLayerNorm with elementwise affine (the cross-attention's norm3): fp32 math, one rounding to x.dtype."""
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), bias.float(), eps).to(x.dtype)


def layernorm_affine_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Triton `layernorm_affine`: the modulate kernel with (weight, bias) for (scale, shift) and no rounding of
    the normalized value before the affine (F.layer_norm rounds once, at the end)."""
    B, L, C = x.shape
    x = x.contiguous()
    w = _per_batch_vector(weight.float(), B, C, "weight")
    b = _per_batch_vector(bias.float(), B, C, "bias")
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    block = triton.next_power_of_2(C)
    _layernorm_modulate_kernel[(B * L,)](
        x, b, w, out, L, C, eps,
        BLOCK_C=block, NORM_DTYPE=tl.float32, OUT_DTYPE=_TL_DTYPE[x.dtype], ONE_PLUS=False,
        num_warps=_num_warps(block), enable_fp_fusion=False,
    )
    return out


def layernorm_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x [B, L, C]; weight, bias [C] -> LayerNorm(x) * weight + bias in x.dtype (fp32 inside)."""
    if _use_triton(x):
        return layernorm_affine_triton(x, weight, bias, eps)
    return layernorm_affine_ref(x, weight, bias, eps)


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
        x_ptr, y_ptr, g_ptr, out_ptr, n_elements, LC, C,
        BLOCK: tl.constexpr, PROD_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr,
    ):
        """Flat elementwise tiling; the gate row is picked per element from its batch index."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        g_offs = (offs // LC) * C + offs % C
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + g_offs, mask=mask, other=0.0).to(tl.float32)
        p = _round_fp32(y * g, PROD_DTYPE)
        tl.store(out_ptr + offs, _round_fp32(x + p, OUT_DTYPE).to(out_ptr.dtype.element_ty), mask=mask)


def gated_residual_triton(
    x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None = None
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
    n = x.numel()
    if n == 0:
        return out
    block = 1024
    _gated_residual_kernel[(triton.cdiv(n, block),)](
        x, y, g, out, n, L * C, C,
        BLOCK=block, PROD_DTYPE=_TL_DTYPE[prod_dtype], OUT_DTYPE=_TL_DTYPE[out_dtype],
        num_warps=4, enable_fp_fusion=False,
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
    def _rmsnorm_rope_kernel(
        x_ptr, w_ptr, cos_ptr, sin_ptr, out_ptr, L, HD, HALF_D, eps,
        BLOCK: tl.constexpr, NORM_DTYPE: tl.constexpr, WPROD_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr,
        ROPE: tl.constexpr,
    ):
        """One program per token row: sum of squares, normalize, weight, rotate pairs (if ROPE), store [H, D]."""
        row = tl.program_id(0).to(tl.int64)
        pos = row % L
        cols = tl.arange(0, BLOCK)
        mask = cols < HD
        x = tl.load(x_ptr + row * HD + cols, mask=mask, other=0.0).to(tl.float32)
        ms = tl.sum(x * x, axis=0) / HD
        r = tl.math.div_rn(tl.full([], 1.0, tl.float32), tl.math.sqrt_rn(ms + eps))
        n = _round_fp32(x * r, NORM_DTYPE)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        n = _round_fp32(n * w, WPROD_DTYPE)
        if ROPE:
            re, im = tl.split(tl.reshape(n, [BLOCK // 2, 2]))
            pair = tl.arange(0, BLOCK // 2)
            pmask = pair < HD // 2
            j = pair % HALF_D
            c = tl.load(cos_ptr + pos * HALF_D + j, mask=pmask, other=0.0)
            s = tl.load(sin_ptr + pos * HALF_D + j, mask=pmask, other=0.0)
            o = tl.reshape(tl.join(re * c - im * s, re * s + im * c), [BLOCK])
        else:
            o = n
        tl.store(out_ptr + row * HD + cols, _round_fp32(o, OUT_DTYPE).to(out_ptr.dtype.element_ty), mask=mask)


def rmsnorm_rope_triton(
    x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
    eps: float = 1e-6, out_dtype: torch.dtype | None = None, weight_in_fp32: bool = False,
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
    block = triton.next_power_of_2(HD)
    if weight_in_fp32:  # round once, after the weight
        norm_dtype, wprod_dtype = torch.float32, x.dtype
    else:  # round to x.dtype, then the weight product in the promoted dtype
        norm_dtype, wprod_dtype = x.dtype, torch.promote_types(x.dtype, weight.dtype)
    _rmsnorm_rope_kernel[(B * L,)](
        x, weight.contiguous(), cos, sin, out, L, HD, D // 2, eps,
        BLOCK=block, NORM_DTYPE=_TL_DTYPE[norm_dtype], WPROD_DTYPE=_TL_DTYPE[wprod_dtype],
        OUT_DTYPE=_TL_DTYPE[out.dtype], ROPE=True,
        num_warps=_num_warps(block), enable_fp_fusion=False,
    )
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
    weight_in_fp32: bool = False,
) -> torch.Tensor:
    """Triton `rmsnorm` (the rmsnorm_rope kernel with the rotation compiled out)."""
    B, L, C = x.shape
    x = x.contiguous()
    if weight_in_fp32:
        norm_dtype, wprod_dtype = torch.float32, x.dtype
    else:
        norm_dtype, wprod_dtype = x.dtype, torch.promote_types(x.dtype, weight.dtype)
    out = torch.empty((B, L, C), dtype=out_dtype or wprod_dtype, device=x.device)
    if x.numel() == 0:
        return out
    block = triton.next_power_of_2(C)
    _rmsnorm_rope_kernel[(B * L,)](
        x, weight.contiguous(), x, x, out, L, C, 1, eps,
        BLOCK=block, NORM_DTYPE=_TL_DTYPE[norm_dtype], WPROD_DTYPE=_TL_DTYPE[wprod_dtype],
        OUT_DTYPE=_TL_DTYPE[out.dtype], ROPE=False,
        num_warps=_num_warps(block), enable_fp_fusion=False,
    )
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
    "gated_residual", "gated_residual_ref", "gated_residual_triton",
    "rmsnorm_rope", "rmsnorm_rope_ref", "rmsnorm_rope_triton", "rope_cos_sin",
]
