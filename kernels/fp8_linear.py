"""FP8 (e4m3fn) linear layers with per-output-channel weight scales and per-token activation scales.

Why: on Hopper, `torch._scaled_mm` with row-wise scales runs the DiT GEMMs about 1.5x faster than bf16
(REFERENCE.md section 11) while torch's int8 `_int_mm` is slow there. The weight is quantized once
(`quantize_weight_fp8`), the activation per call by one fused Triton kernel (`quantize_per_token_fp8`).

Numerics, identical on every device up to the GEMM's summation order:
    scale = max(amax(|row|), 2^-40) * fp32(1/448)        (fp32; amax-0 rows get a tiny finite scale)
    q     = e4m3fn_rne(clamp(row * (1 / scale), -448, 448))
    y     = bf16(sum_k qx * qw * scale_x * scale_w + bias_bf16), then cast to x.dtype
The CPU path emulates this with a float32 matmul so tests run without a GPU.
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

_MAX_SINGLE_TILE = 16384  # widest row kept whole in registers; wider rows loop over tiles


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

    @triton.jit
    def _quantize_rows_kernel(
        x_ptr, q_ptr, scale_ptr, K, stride_x, stride_q,
        BLOCK_K: tl.constexpr, SINGLE_TILE: tl.constexpr,
    ):
        """One program per row: amax, scale and cast; the row stays in registers when it fits one tile."""
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        q_row = q_ptr + row * stride_q
        cols = tl.arange(0, BLOCK_K)
        if SINGLE_TILE:
            mask = cols < K
            x = tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32)
            amax = tl.max(tl.abs(x), axis=0)
        else:
            acc = tl.zeros([BLOCK_K], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                xk = tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
                acc = tl.maximum(acc, tl.abs(xk))
            amax = tl.max(acc, axis=0)
        scale = tl.maximum(amax, _AMAX_FLOOR) * _RECIP_FP8_MAX
        inv = tl.math.div_rn(tl.full([], 1.0, tl.float32), scale)
        tl.store(scale_ptr + row, scale)
        if SINGLE_TILE:
            q = tl.minimum(tl.maximum(x * inv, -_FP8_MAX), _FP8_MAX)
            tl.store(q_row + cols, _round_to_e4m3_grid(q).to(q_ptr.dtype.element_ty), mask=mask)
        else:
            for k0 in range(0, K, BLOCK_K):
                m = k0 + cols < K
                xk = tl.load(x_row + k0 + cols, mask=m, other=0.0).to(tl.float32)
                q = tl.minimum(tl.maximum(xk * inv, -_FP8_MAX), _FP8_MAX)
                tl.store(q_row + k0 + cols, _round_to_e4m3_grid(q).to(q_ptr.dtype.element_ty), mask=m)


def quantize_per_token_fp8_triton(x: torch.Tensor, *, max_tile: int = _MAX_SINGLE_TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused Triton per-token quantization of x [M, K] (CUDA, or CPU under TRITON_INTERPRET=1).

    Fixed launch configuration (no autotune): the same shape always runs the same code, so bits repeat.
    `max_tile` (a power of two) caps the register tile; tests lower it to exercise the looped path.
    """
    if x.dim() != 2:
        raise ValueError(f"expected x [M, K], got shape {tuple(x.shape)}")
    if x.stride(-1) != 1:
        x = x.contiguous()
    M, K = x.shape
    q = torch.empty((M, K), dtype=FP8_DTYPE, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M == 0:
        return q, scale
    block = min(triton.next_power_of_2(max(K, 16)), max_tile)
    _quantize_rows_kernel[(M,)](
        x, q, scale, K, x.stride(0), q.stride(0),
        BLOCK_K=block, SINGLE_TILE=K <= block, num_warps=max(1, min(16, block // 512)),
    )
    return q, scale


def quantize_per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] (bf16/fp16/fp32) -> (x_fp8 [M, K] e4m3fn, x_scale [M] fp32): Triton on CUDA, torch elsewhere."""
    if _use_triton(x):
        return quantize_per_token_fp8_triton(x)
    return quantize_per_token_fp8_ref(x)


# ------------------------------------------------------------------------------------------ linear
def _scaled_mm_supported(device: torch.device) -> bool:
    """Row-wise `_scaled_mm` needs compute capability >= 8.9 (Ada/Hopper and newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_linear_emulated(
    x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Quantize-dequantize emulation of `fp8_linear` (float32 matmul): CPU path and test oracle."""
    K = x.shape[-1]
    x2 = x.reshape(-1, K)
    xq, xs = quantize_per_token_fp8_ref(x2)
    acc = xq.float() @ w_fp8.float().t()
    y = acc * xs.unsqueeze(1) * w_scale.float().unsqueeze(0)
    if bias is not None:
        y = y + bias.to(torch.bfloat16).float()
    return y.to(torch.bfloat16).to(x.dtype).reshape(*x.shape[:-1], w_fp8.shape[0])


def fp8_linear(
    x: torch.Tensor,
    w_fp8: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    use_fast_accum: bool = False,
) -> torch.Tensor:
    """y = x @ W^T + b with W stored as e4m3fn [N, K] + fp32 scale [N]; x is [..., K], y is [..., N] in x.dtype.

    CUDA (sm89+): fused per-token quantization, then `torch._scaled_mm` (row-wise scales, bf16 out, bias fused).
    `_scaled_mm` wants A row-major and B column-major (`w_fp8.t()` of a contiguous [N, K] is exactly that), fp32
    scales shaped [M, 1] / [1, N], and K, N multiples of 16 (M is free). Elsewhere: the float32 emulation.
    `use_fast_accum` trades Hopper's periodic fp32 promotion of the accumulator for speed; off by default.
    """
    K = x.shape[-1]
    N = w_fp8.shape[0]
    if w_fp8.dtype != FP8_DTYPE or w_fp8.shape[1] != K:
        raise ValueError(f"fp8_linear: weight must be e4m3fn [N, {K}], got {w_fp8.dtype} {tuple(w_fp8.shape)}")
    if not (x.is_cuda and _scaled_mm_supported(x.device) and K % 16 == 0 and N % 16 == 0):
        return fp8_linear_emulated(x, w_fp8, w_scale, bias)
    x2 = x.reshape(-1, K)
    xq, xs = quantize_per_token_fp8(x2)
    y = torch._scaled_mm(
        xq,
        w_fp8.t(),
        scale_a=xs.view(-1, 1),
        scale_b=w_scale.view(1, -1),
        bias=None if bias is None else bias.to(torch.bfloat16),
        out_dtype=torch.bfloat16,
        use_fast_accum=use_fast_accum,
    )
    return y.to(x.dtype).view(*x.shape[:-1], N)


class FP8Linear(nn.Module):
    """Drop-in inference replacement for nn.Linear holding an e4m3fn weight and per-output-channel scales.

    Buffers (all in the state dict, so a quantized model saves to safetensors and loads back with no
    re-quantization): `weight` e4m3fn [out, in], `weight_scale` fp32 [out], optional `bias` bf16 [out].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, *,
                 use_fast_accum: bool = False):
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
    def from_linear(cls, linear: nn.Linear, *, use_fast_accum: bool = False) -> "FP8Linear":
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


__all__ = [
    "FP8_DTYPE", "FP8_MAX", "FP8Linear", "fp8_linear", "fp8_linear_emulated", "quantize_weight_fp8",
    "quantize_per_token_fp8", "quantize_per_token_fp8_ref", "quantize_per_token_fp8_triton",
    "quantize_rows_fp8_ref",
]
