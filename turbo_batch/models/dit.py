"""The Wan2.1 / Wan2.2 diffusion transformer (T2V and the 36-channel I2V experts), in one file.

Module and parameter names are the official Wan checkpoint keys, so official safetensors load with no renaming;
TurboDiffusion checkpoints add one SLA projection per layer, `blocks.{i}.self_attn.attn_op.local_attn.proj_l`,
which is always present here (unused by dense attention).

Numerics follow TurboDiffusion's Wan network (rcm/networks/wan2pt1.py, wan2pt2.py), the code the Turbo
checkpoints were distilled and run with: weights and matmuls in the model dtype; time embedding, modulation
tables, norms, RoPE and the output head in float32 (Wan's `autocast(dtype=float32)` regions); the residual
stream in the model dtype. In float32 everything is float32.

Batch invariance: no op mixes batch elements, and the tiny time-embedding MLP runs one row at a time, so a
row's output does not depend on which other rows share its batch (checked bit-for-bit on CPU by the tests).

Fast path (CUDA, bf16 model, `model.fused = True`, the default): the same math through fused kernels
(kernels/norms.py): modulated LayerNorm, affine LayerNorm, q/k RMSNorm + RoPE straight into the (B, L, H, D)
attention layout, gated residual adds in place on the block's own stream; FP8 blocks quantize an activation
once for q/k/v (and for the cross k/v) and run the FFN hidden activation through fused GELU + quantization; the
modulated LayerNorms in front of FP8 q/k/v and an FP8 FFN write the per-token fp8 rows directly
(`layernorm_modulate_fp8`: the same bits as modulating to bf16 and then quantizing, without the bf16 round trip).
A short prompt's cross-attention can attend to its tokens plus one key standing for all its zero padding rows
(`collapse_text_padding`; exact up to summation order) instead of 512 rows, for prompts of up to
`COLLAPSE_MAX_ROWS` tokens.
Every kernel rounds where the torch path rounds, so the two agree within bf16 rounding; the torch path (CPU,
float32, `fused = False`) is the specification.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kernels.cross_attention import cross_attention
from kernels.fp8_gemm import (
    ffn_hidden_scales,
    fp8_matmul_gelu_quant_rows_triton,
    matmul_residual_triton,
    use_triton_gemm,
    weight_row_l1_max,
)
from kernels.fp8_linear import FP8Linear, fp8_ffn_gelu, fp8_ffn_gelu_quantized, quantize_per_token_fp8
from kernels.norms import (
    gated_residual,
    layernorm_affine,
    layernorm_affine_fp8,
    layernorm_modulate,
    layernorm_modulate_fp8,
    rmsnorm,
    rmsnorm_rope,
)

from .attention import BACKENDS, attention


@dataclass(frozen=True)
class DiTConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6

    @classmethod
    def from_dict(cls, mapping: Mapping) -> "DiTConfig":
        """A config from a preset's `dit` section; keys that are not fields are ignored."""
        names = {f.name for f in fields(cls)}
        kwargs = {k: mapping[k] for k in mapping if k in names}
        if "patch_size" in kwargs:
            kwargs["patch_size"] = tuple(int(p) for p in kwargs["patch_size"])
        return cls(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# ------------------------------------------------------------------------------------------------ helpers
def fp32_linear(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` computed in float32 whatever the weight dtype (Wan's float32 autocast regions)."""
    bias = linear.bias.float() if linear.bias is not None else None
    return F.linear(x.float(), linear.weight.float(), bias)


def modulate(normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN: normed * (1 + scale) + shift in float32, returned in the activation dtype."""
    return (normed.float() * (1 + scale) + shift).to(normed.dtype)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding [cos | sin] of t * 10000^(-i/half), computed in float64, returned in float32."""
    half = dim // 2
    t = t.to(torch.float64)
    angles = torch.outer(t, torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1).float()


def rope_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (t, h, w): h and w get (d/2)//3 each, t the rest (22/21/21 for d=128)."""
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


def rope_tables(head_dim: int, grid: tuple[int, int, int], device, theta: float = 10000.0) -> torch.Tensor:
    """Unit complex rotations [L, 1, head_dim/2] (complex64, angles in float64) for tokens in (t, h, w) order."""
    tables = []
    for pairs, length in zip(rope_pairs(head_dim), grid):
        inv_freq = 1.0 / theta ** (torch.arange(0, 2 * pairs, 2, dtype=torch.float64) / (2 * pairs))
        tables.append(torch.outer(torch.arange(length, dtype=torch.float64), inv_freq))
    t, h, w = grid
    angles = torch.cat(
        [
            tables[0][:, None, None, :].expand(t, h, w, -1),
            tables[1][None, :, None, :].expand(t, h, w, -1),
            tables[2][None, None, :, :].expand(t, h, w, -1),
        ],
        dim=-1,
    ).reshape(t * h * w, 1, -1)
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, L, H, D] as complex numbers, in float32."""
    rotated = torch.view_as_complex(x.float().unflatten(-1, (-1, 2))) * rope
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


class Fp8Rows(NamedTuple):
    """An activation [..., K] of dtype `dtype` already quantized per token for FP8 Linears (q [M, K] e4m3fn, scale [M]
    fp32): what `project` and the FP8 FFN take in place of the tensor when a fused kernel wrote the fp8 rows
    without ever storing the activation itself."""

    q: torch.Tensor
    scale: torch.Tensor
    shape: torch.Size
    dtype: torch.dtype


def all_fp8(*linears: nn.Module) -> bool:
    """True when every layer is an FP8Linear: they can all take one per-token quantization of their input."""
    return all(isinstance(m, FP8Linear) for m in linears)


def quantize_in_norm(*linears: nn.Module) -> bool:
    """Whether the modulated LayerNorm in front of these Linears should write their fp8 rows itself: when they are
    all FP8, each would only quantize the norm's output (the same bits either way; one pass over the activation
    saved)."""
    return all_fp8(*linears)


def modulated_input(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float,
                    fp8_rows: bool) -> torch.Tensor | Fp8Rows:
    """LN(x) * (1 + scale) + shift for the next Linears, as per-token fp8 rows when `fp8_rows`."""
    if fp8_rows:
        return Fp8Rows(*layernorm_modulate_fp8(x, shift, scale, eps), x.shape, x.dtype)
    return layernorm_modulate(x, shift, scale, eps)


def affine_input(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                 fp8_rows: bool) -> torch.Tensor | Fp8Rows:
    """LN(x) * weight + bias (the cross-attention's norm3) for the next Linear, as per-token fp8 rows when
    `fp8_rows`: the same bits as quantizing the bf16 output, one pass over the activation saved."""
    if fp8_rows:
        return Fp8Rows(*layernorm_affine_fp8(x, weight, bias, eps), x.shape, x.dtype)
    return layernorm_affine(x, weight, bias, eps)


def project(x: torch.Tensor | Fp8Rows, *linears: nn.Module) -> list[torch.Tensor]:
    """[linear(x) for linear in linears]; FP8 layers share one quantization of x (same bits as quantizing per layer),
    or take the rows of an already quantized x."""
    if isinstance(x, Fp8Rows):
        if not all_fp8(*linears):
            raise TypeError("project: fp8 rows can only feed FP8Linear layers")
        return [m.forward_quantized(x.q, x.scale).to(x.dtype).view(*x.shape[:-1], m.out_features) for m in linears]
    if len(linears) > 1 and all_fp8(*linears):
        return project(fp8_rows(x), *linears)
    return [m(x) for m in linears]


def fp8_rows(x: torch.Tensor | Fp8Rows) -> Fp8Rows:
    """x as per-token fp8 rows (quantized here unless a fused norm already wrote them)."""
    if isinstance(x, Fp8Rows):
        return x
    return Fp8Rows(*quantize_per_token_fp8(x.reshape(-1, x.shape[-1])), x.shape, x.dtype)


def fuses_epilogue(x: torch.Tensor, *linears: nn.Module) -> bool:
    """Whether these Linears run as Triton GEMMs with their epilogue fused (kernels/fp8_gemm.py): on Hopper (or the
    interpreter), for bf16 activations and layers whose widths suit the kernel's tiles (N a multiple of 128, K of 16;
    the tiny test presets fall back to the unfused path)."""
    return x.dtype == torch.bfloat16 and use_triton_gemm(x) and all(
        m.out_features % 128 == 0 and m.in_features % 16 == 0 and
        (isinstance(m, FP8Linear) or m.weight.dtype == torch.bfloat16) for m in linears)


def linear_residual(a: torch.Tensor, linear: nn.Module, residual: torch.Tensor, gate: torch.Tensor | None,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """residual + linear(a) * gate (gate [B, N] in the activation dtype, or None: a plain add) by one Triton GEMM
    whose epilogue reads the residual tile and writes the sum, so the projection's output never reaches HBM.

    a [B, L, K] bf16, residual [B, L, N]; writes `out` (default: `residual`, in place). FP8 layers quantize a per
    token first. Same formula and roundings as `gated_residual(residual, linear(a), gate)`."""
    B, L, K = a.shape
    N = linear.out_features
    out = residual if out is None else out
    if isinstance(linear, FP8Linear):
        rows = fp8_rows(a.contiguous())
        args = (rows.q, rows.scale, linear.weight, linear.weight_scale)
    else:
        args = (a.reshape(-1, K).contiguous(), None, linear.weight, None)
    matmul_residual_triton(*args, linear.bias, residual.view(-1, N), gate, L, out=out.view(-1, N))
    return out


# ------------------------------------------------------------------------------------------------ layers
class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, output in the input dtype (Wan's WanLayerNorm)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the full model dim (qk-norm across heads), in float32."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


class Float32Linear(nn.Linear):
    """A Linear whose parameters stay float32 through `model.to(dtype)` (SLA's proj_l is trained in fp32)."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for p in self.parameters(recurse=False):
            if p.is_floating_point() and p.dtype != torch.float32:
                p.data = p.data.float()
        return self


class LinearBranch(nn.Module):
    """Holds SLA's linear-attention output projection at the checkpoint path `attn_op.local_attn.proj_l`."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.proj_l = Float32Linear(head_dim, head_dim)


class SelfAttentionOp(nn.Module):
    """The switchable self-attention kernel (dense / sla / sla_ref) with its SLA parameters."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.local_attn = LinearBranch(head_dim)
        self.backend = "dense"
        self.topk = 0.1

    def forward(self, q, k, v):
        return attention(q, k, v, self.backend, proj_l=self.local_attn.proj_l, topk=self.topk)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.attn_op = SelfAttentionOp(dim // num_heads)

    def forward(self, x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = apply_rope(self.norm_q(self.q(x)).unflatten(2, heads), rope)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(2, heads), rope)
        v = self.v(x).unflatten(2, heads)
        return self.o(self.attn_op(q, k, v).flatten(2))

    def forward_fused(self, x: torch.Tensor | Fp8Rows, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return self.o(self.attend_fused(x, cos, sin))

    def attend_fused(self, x: torch.Tensor | Fp8Rows, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """`forward` up to the output projection, with RMSNorm + RoPE fused (rounded once after the weight, like
        RMSNorm, then once after the rotation, like apply_rope), written directly as (B, L, H, D); cos/sin
        [L, head_dim/2] fp32. x may arrive as fp8 rows when q, k, v are FP8 (see `quantize_in_norm`)."""
        q, k, v = project(x, self.q, self.k, self.v)
        q = rmsnorm_rope(q, self.norm_q.weight, cos, sin, self.num_heads, self.norm_q.eps, weight_in_fp32=True)
        k = rmsnorm_rope(k, self.norm_k.weight, cos, sin, self.num_heads, self.norm_k.eps, weight_in_fp32=True)
        return self.attn_op(q, k, v.unflatten(2, (self.num_heads, -1))).flatten(2)


TEXT_ROWS_BUCKET = 64  # a context's rows are padded to a multiple of this, so few shapes (and CUDA graphs) arise
# Contexts of more rows attend to all text_len rows through SDPA. Measured on an H100 (1.3B 480p FP8 + SLA forward
# through graphs, bench/experiments/cross_attention_sweep.py): a 40-token prompt 142.5 vs 145.0 ms (1.7%), a 100-token
# one 147.3 vs 148.0 ms; at 256 rows the kernel (0.213 ms) no longer beats cuDNN over 512 rows (0.185), hence 128.
# As accurate as the 512 rows (bench/experiments/collapse_error.py). The renderer keeps a row's bits independent of
# its batch by splitting batches by `text_rows` (GPU test: tests/test_cross_attention.py, session 20).
COLLAPSE_MAX_ROWS = 128


def text_rows(tokens: int, text_len: int) -> int:
    """How many of a `tokens`-token prompt's rows the DiT attends to before the collapsed padding row: its
    TEXT_ROWS_BUCKET bucket where `collapse_text_padding` collapses, else all text_len rows. A batch collapses to its
    longest prompt's bucket, so only rows of one bucket share a batch with the bits they get alone
    (`Pipeline.render_batch` splits by it)."""
    rows = min(text_len, -(-max(tokens, 1) // TEXT_ROWS_BUCKET) * TEXT_ROWS_BUCKET)
    return text_len if rows >= text_len or rows > COLLAPSE_MAX_ROWS else rows


def collapse_text_padding(context: torch.Tensor, text_len: int) -> tuple[torch.Tensor, int]:
    """(rows, pad_count): `context` [B, L, C] zero-padded to a multiple of TEXT_ROWS_BUCKET rows plus one zero row
    that stands for the other `pad_count` of the text_len - L padding rows, or to all text_len rows (pad_count 0).

    Why this is exact: Wan attends, unmasked, to a prompt's embedding zero-padded to text_len rows; every zero row
    embeds to the same key and value, and n copies of a key weigh in the softmax as one with ln n on its logit
    (kernels/cross_attention.py). A 50-token prompt then costs 65 keys instead of 512.
    """
    L = context.shape[1]
    rows = text_rows(L, text_len)
    if rows == text_len:
        return F.pad(context, (0, 0, 0, text_len - L)), 0
    return F.pad(context, (0, 0, 0, rows + 1 - L)), text_len - rows


class CrossAttention(nn.Module):
    """Video tokens attend to the (zero-padded, unmasked) text context; always dense."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(2, heads)
        k = self.norm_k(self.k(context)).unflatten(2, heads)
        v = self.v(context).unflatten(2, heads)
        return self.o(attention(q, k, v, "dense").flatten(2))

    def forward_fused(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.o(self.attend_fused(x, context))

    def attend_fused(self, x: torch.Tensor | Fp8Rows, context: torch.Tensor, pad_count: int = 0) -> torch.Tensor:
        """`forward` up to the output projection, through the fused RMSNorm kernel; x may arrive as fp8 rows when
        q is FP8 (see `affine_input`). `pad_count` > 0: context's last row stands for that many padding rows
        (`collapse_text_padding`)."""
        heads = (self.num_heads, -1)
        q = rmsnorm(project(x, self.q)[0], self.norm_q.weight, self.norm_q.eps, weight_in_fp32=True).unflatten(2, heads)
        k, v = project(context, self.k, self.v)
        k = rmsnorm(k, self.norm_k.weight, self.norm_k.eps, weight_in_fp32=True).unflatten(2, heads)
        if pad_count:
            return cross_attention(q, k, v.unflatten(2, heads), pad_count).flatten(2)
        return attention(q, k, v.unflatten(2, heads), "dense").flatten(2)


class FeedForward(nn.Sequential):
    """Linear -> GELU(tanh) -> Linear at the checkpoint keys `ffn.0` / `ffn.2`.

    When both Linears are FP8 (quantize_linears_), the fused path never stores the GELU output in bf16: one
    kernel reads the up projection's output once and writes the down projection's fp8 input (fp8_ffn_gelu).
    """

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))

    def forward_fused(self, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        """The FFN on x, or on its fp8 rows when both Linears are FP8 (see `quantize_in_norm`)."""
        up, down = self[0], self[2]
        if isinstance(x, Fp8Rows):
            return fp8_ffn_gelu_quantized(x.q, x.scale, up, down, x.dtype).view(*x.shape[:-1], down.out_features)
        if all_fp8(up, down):
            return fp8_ffn_gelu(x, up, down)
        return self(x)

    def fuses_epilogues(self, x: torch.Tensor) -> bool:
        """Both Linears FP8 and `fuses_epilogue`: the FFN can run as the two epilogue-fused Triton GEMMs."""
        return all_fp8(self[0], self[2]) and fuses_epilogue(x, self[0], self[2])

    def hidden_bound(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(max_j ||w_j||_1, max_j |b_j|) of the up projection (0-dim fp32), for `ffn_hidden_scales`. Cached per
        weight storage and version (a reload or a move recomputes it), and never from inside a CUDA graph capture
        (the graph's warm-up runs eagerly first)."""
        up = self[0]
        key = tuple((t.data_ptr(), t._version) for t in (up.weight, up.weight_scale, up.bias) if t is not None)
        cached = getattr(self, "_hidden_bound", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        bias = up.bias.abs().max().float() if up.bias is not None else torch.zeros((), device=up.weight.device)
        bound = (weight_row_l1_max(up.weight, up.weight_scale), bias)
        if not (up.weight.is_cuda and torch.cuda.is_current_stream_capturing()):
            self._hidden_bound = (key, bound)
        return bound

    def add_gated_(self, x: torch.Tensor | Fp8Rows, residual: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """residual += FFN(x) * gate in place, by two Triton GEMMs (only when `fuses_epilogues`): the up projection's
        epilogue applies the GELU and writes the hidden activation as fp8 with per-token scales bounded before the
        GEMM (`ffn_hidden_scales`; it never exists in bf16), the down projection's epilogue adds its gated output
        to the stream."""
        up, down = self[0], self[2]
        rows = fp8_rows(x)
        hs = ffn_hidden_scales(rows.scale, *self.hidden_bound())
        hq = fp8_matmul_gelu_quant_rows_triton(rows.q, rows.scale, up.weight, up.weight_scale, up.bias, hs)
        N = down.out_features
        matmul_residual_triton(hq, hs, down.weight, down.weight_scale, down.bias, residual.view(-1, N), gate,
                               residual.shape[1])
        return residual


class ModulationTerms(NamedTuple):
    """One block's AdaLN terms for the fused path: shifts and scales fp32 [B, dim], gates in the activation dtype."""
    shift_sa: torch.Tensor
    scale_sa: torch.Tensor
    gate_sa: torch.Tensor
    shift_ff: torch.Tensor
    scale_ff: torch.Tensor
    gate_ff: torch.Tensor


def modulation_terms(blocks, e6: torch.Tensor, dtype: torch.dtype) -> list[ModulationTerms]:
    """Every block's `modulation + e6` (fp32, as `Block.forward`) with its two gates cast to `dtype`, in three
    launches for the whole stack instead of four per block: the same values, and a 1.3B forward has 117 fewer
    tiny kernels (each a few microseconds of launch, ramp and tail on the GPU)."""
    mods = torch.stack([b.modulation for b in blocks]).float() + e6[None]  # [N, 1, 6, dim] + [1, B, 6, dim]
    gates = mods[:, :, 2::3].to(dtype)  # gate_sa, gate_ff
    return [ModulationTerms(m[:, 0], m[:, 1], g[:, 0], m[:, 3], m[:, 4], g[:, 1]) for m, g in zip(mods, gates)]


class Block(nn.Module):
    """AdaLN block: self-attn (6-way modulated), cross-attn (affine norm3), GELU(tanh) FFN (modulated)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps)
        self.norm2 = LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, cfg.ffn_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 6, dim))
        self.fused_epilogues = True  # see forward_fused; WanDiT.set_fused_epilogues switches every block

    def forward(self, x, e6, context, rope):
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation.float() + e6).chunk(6, dim=1)
        x = x + self.self_attn(modulate(self.norm1(x), shift_sa, scale_sa), rope) * gate_sa.to(x.dtype)
        x = x + self.cross_attn(self.norm3(x), context)
        x = x + self.ffn(modulate(self.norm2(x), shift_ff, scale_ff)) * gate_ff.to(x.dtype)
        return x

    def forward_fused(self, x, e6, context, cos, sin, terms: ModulationTerms | None = None, pad_count: int = 0):
        """`forward` through the fused kernels. The first residual add writes a new stream (the caller's x is
        never modified); the other two update that stream in place (each element is read before it is written).
        Where `fused_epilogues` is on and the kernels allow it (`fuses_epilogue`), each residual add runs in the
        epilogue of the GEMM in front of it, and the FFN's hidden activation goes from GEMM to GEMM in fp8.
        `terms`: this block's modulation already computed (`modulation_terms`); else it is computed from e6.
        `pad_count`: the text context's padding collapsed into its last row (`collapse_text_padding`), or 0."""
        if terms is None:
            terms = modulation_terms([self], e6, x.dtype)[0]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = terms
        eps = self.norm1.eps
        sa, ca, ffn = self.self_attn, self.cross_attn, self.ffn
        fuse = self.fused_epilogues
        a = sa.attend_fused(modulated_input(x, shift_sa, scale_sa, eps, quantize_in_norm(sa.q, sa.k, sa.v)), cos, sin)
        if fuse and fuses_epilogue(a, sa.o):
            x = linear_residual(a, sa.o, x, gate_sa, out=torch.empty_like(x))
        else:
            x = gated_residual(x, sa.o(a), gate_sa)
        a = ca.attend_fused(affine_input(x, self.norm3.weight, self.norm3.bias, eps, quantize_in_norm(ca.q)), context,
                             pad_count)
        if fuse and fuses_epilogue(a, ca.o):
            linear_residual(a, ca.o, x, None)
        else:
            x.add_(ca.o(a))
        y = modulated_input(x, shift_ff, scale_ff, eps, quantize_in_norm(ffn[0], ffn[2]))
        if fuse and ffn.fuses_epilogues(x):
            return ffn.add_gated_(y, x, gate_ff)
        return gated_residual(x, ffn.forward_fused(y), gate_ff, out=x)


class Head(nn.Module):
    """Final AdaLN (2-way modulation) and projection to patch pixels, in float32."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, math.prod(cfg.patch_size) * cfg.out_dim)
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).chunk(2, dim=1)
        return fp32_linear(self.head, self.norm(x).float() * (1 + scale) + shift)

    def forward_fused(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Norm rounded to x.dtype, modulation in fp32 (as `forward`), in one kernel writing fp32."""
        shift, scale = (self.modulation.float() + e.unsqueeze(1)).unbind(1)
        return fp32_linear(self.head, layernorm_modulate(x, shift, scale, self.norm.eps, out_dtype=torch.float32))


# ------------------------------------------------------------------------------------------------ model
class WanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        if cfg.dim % cfg.num_heads or cfg.head_dim % 2:
            raise ValueError(f"dim {cfg.dim} must split into {cfg.num_heads} heads of even size")
        self.cfg = cfg
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(
            nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.dim, cfg.dim)
        )
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, 6 * cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self._rope_cache: dict = {}  # not a buffer: the model is built on the meta device
        self.fused = True  # fused kernels on CUDA for bf16 models; False forces the torch path (for comparisons)

    def set_attention(self, backend: str, topk: float = 0.1) -> None:
        """Choose the self-attention kernel of every block; cross-attention stays dense."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        for block in self.blocks:
            block.self_attn.attn_op.backend = backend
            block.self_attn.attn_op.topk = float(topk)

    def set_fused_epilogues(self, on: bool) -> None:
        """Run residual adds (and the FFN's GELU + quantization) inside the GEMMs' epilogues where the kernels
        allow it (on by default; off: cuBLAS GEMMs followed by the elementwise kernels, for comparisons)."""
        for block in self.blocks:
            block.fused_epilogues = bool(on)

    def rope(self, grid: tuple[int, int, int], device) -> torch.Tensor:
        """Complex RoPE table of the torch path, built once per (grid, device)."""
        key = ("complex", *grid, str(device))
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_tables(self.cfg.head_dim, grid, device)
        return self._rope_cache[key]

    def rope_cos_sin(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        """The same rotations as fp32 cos/sin [L, head_dim/2] for the fused kernel, built once per (grid, device)."""
        key = ("cos_sin", *grid, str(device))
        if key not in self._rope_cache:
            table = rope_tables(self.cfg.head_dim, grid, "cpu").flatten(1)
            self._rope_cache[key] = (table.real.contiguous().to(device), table.imag.contiguous().to(device))
        return self._rope_cache[key]

    def use_fused(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """The fused-kernel path runs for bf16 models on CUDA unless `fused` is off."""
        return bool(self.fused) and x.is_cuda and dtype == torch.bfloat16

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> tokens [B, L, dim]: the Conv3d as one GEMM over (c, kt, kh, kw) patches."""
        b, c, t, h, w = x.shape
        kt, kh, kw = self.cfg.patch_size
        x = x.view(b, c, t // kt, kt, h // kh, kh, w // kw, kw).permute(0, 2, 4, 6, 1, 3, 5, 7)
        x = x.reshape(b, -1, c * kt * kh * kw)
        return F.linear(x, self.patch_embedding.weight.flatten(1), self.patch_embedding.bias)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output [B, L, (kt kh kw c)] -> [B, c, T, H, W]."""
        kt, kh, kw = self.cfg.patch_size
        t, h, w = grid
        x = x.view(x.shape[0], t, h, w, kt, kh, kw, self.cfg.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(x.shape[0], self.cfg.out_dim, t * kt, h * kh, w * kw)

    def time_embed(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(e [B, dim], e6 [B, 6, dim]) in float32, one row at a time so a row never depends on its batch."""
        rows = []
        for t in timestep.reshape(-1, 1):
            emb = sinusoidal_embedding(self.cfg.freq_dim, t)
            e = fp32_linear(self.time_embedding[2], F.silu(fp32_linear(self.time_embedding[0], emb)))
            rows.append((e, fp32_linear(self.time_projection[1], F.silu(e))))
        e = torch.cat([r[0] for r in rows])
        return e, torch.cat([r[1] for r in rows]).unflatten(1, (6, self.cfg.dim))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Velocity [B, out_dim, T, H, W] (float32) for latents x [B, in_dim, T, H, W] at `timestep` [B]
        (0..1000 scale) given text context [B, L<=text_len, text_dim] (zero-padded here to text_len)."""
        cfg = self.cfg
        dtype = self.patch_embedding.weight.dtype
        if x.shape[1] != cfg.in_dim:
            raise ValueError(f"input has {x.shape[1]} channels, this DiT takes {cfg.in_dim}")
        if context.shape[1] > cfg.text_len:
            raise ValueError(f"context has {context.shape[1]} tokens, more than text_len {cfg.text_len}")
        grid = tuple(n // p for n, p in zip(x.shape[2:], cfg.patch_size))
        h = self.patchify(x.to(dtype))
        e, e6 = self.time_embed(timestep.to(x.device))
        if self.use_fused(x, dtype):
            context, pad_count = collapse_text_padding(context.to(dtype), cfg.text_len)
            context = self.text_embedding(context)
            cos, sin = self.rope_cos_sin(grid, x.device)
            for block, terms in zip(self.blocks, modulation_terms(self.blocks, e6, h.dtype)):
                h = block.forward_fused(h, e6, context, cos, sin, terms, pad_count)
            return self.unpatchify(self.head.forward_fused(h, e), grid)
        context = self.text_embedding(F.pad(context.to(dtype), (0, 0, 0, cfg.text_len - context.shape[1])))
        rope = self.rope(grid, x.device)
        for block in self.blocks:
            h = block(h, e6, context, rope)
        return self.unpatchify(self.head(h, e), grid)
