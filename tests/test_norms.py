"""Specification of the fused DiT elementwise kernels: modulated LayerNorm (and its fused FP8 quantization), gated
residual, RMSNorm + 3D RoPE.

The torch references state the dtype semantics of Wan/TurboDiffusion; the Triton kernels must match them
(bit for bit for the gated residual, within one final rounding for the reductions) in the interpreter on
CPU and on CUDA, and repeat their bits run to run. The fused LayerNorm -> fp8 kernel gives exactly the bits of
the two kernels it replaces."""
from __future__ import annotations

import textwrap

import pytest
from _helpers import run_interpreted
import torch
import torch.nn.functional as F

from kernels.fp8_linear import quantize_per_token_fp8, quantize_per_token_fp8_ref
from kernels.norms import (
    gated_residual,
    gated_residual_ref,
    layernorm_affine,
    layernorm_affine_ref,
    layernorm_affine_fp8,
    layernorm_affine_fp8_ref,
    layernorm_modulate,
    layernorm_modulate_fp8,
    layernorm_modulate_fp8_ref,
    layernorm_modulate_ref,
    norm_launch_config,
    old_launch_config,
    rmsnorm,
    rmsnorm_ref,
    rmsnorm_rope,
    rmsnorm_rope_ref,
    rope_cos_sin,
    row_tiling,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def make_inputs(B, L, C, heads, dtype, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, L, C, generator=g) * 2 + 0.5).to(dtype)
    y = torch.randn(B, L, C, generator=g).to(dtype)
    shift = 0.1 * torch.randn(B, 1, C, generator=g)
    scale = 0.1 * torch.randn(B, 1, C, generator=g)
    gate = torch.randn(B, 1, C, generator=g)
    weight = 1 + 0.1 * torch.randn(C, generator=g)
    return [t.to(device) for t in (x, y, shift, scale, gate, weight)]


def within_one_rounding(a: torch.Tensor, b: torch.Tensor, roundings: int = 1, scale: float = 0.0) -> bool:
    """Equal up to `roundings` ulps of a bf16 output (reductions in another order may flip the last bit of each
    rounded intermediate), or to a few ulps of an fp32 one. `scale` is the magnitude of the intermediates
    (1 for unit-RMS normalized values): RoPE's n1*cos - n2*sin can cancel, so an ulp of n is not an ulp of out."""
    rel = roundings * (2.0**-7 if b.dtype == torch.bfloat16 else 2.0**-20)
    return bool(((a.float() - b.float()).abs() <= (b.float().abs() + scale) * rel + 1e-6).all())


def modulated_within_one_rounding(a: torch.Tensor, b: torch.Tensor, x: torch.Tensor, scale: torch.Tensor) -> bool:
    """For layernorm_modulate: the normalized value n is rounded to x.dtype BEFORE the modulation, so a 1-ulp
    flip of n (another mean/variance summation order, e.g. CUDA's Welford F.layer_norm vs the kernel's two-pass
    sum) moves the output by ulp(n) * |1 + scale|, which is not bounded by |output| when `+ shift` cancels
    n * (1 + scale). Allowed: one rounding of n carried through the modulation plus one rounding of the output.
    (The kernel is right to round n: that is WanLayerNorm's `.type_as(x)`; the old output-relative check was
    the wrong test, so the test changed, not the kernel.)"""
    if x.dtype != torch.bfloat16:
        return within_one_rounding(a, b)
    n = F.layer_norm(x.float(), (x.shape[-1],), eps=1e-6)
    carried = n.abs() * (1 + scale.float()).abs()
    tol = 2.0**-7 * (carried + b.float().abs()) + 1e-6
    return bool(((a.float() - b.float()).abs() <= tol).all())


def mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a != b).float().mean().item()


def same_fp8(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> bool:
    """Bitwise equality of two (e4m3fn rows, fp32 scales) pairs."""
    return bool(torch.equal(a[0].view(torch.uint8), b[0].view(torch.uint8)) and torch.equal(a[1], b[1]))


def with_degenerate_rows(x: torch.Tensor, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last batch element gets shift 0 and a constant row (LayerNorm 0: an all-zero row, quantized with the
    floor scale); batch element 0 a row 1000x larger than the others (same normalized values up to eps)."""
    x, shift = x.clone(), shift.clone()
    shift[-1] = 0
    x[-1, 2] = 3.0
    x[0, 1] = x[0, 1] * 1000
    return x, shift


# ============================================================================================ references
def test_layernorm_modulate_ref_is_wans_fp32_norm_rounded_then_fp32_modulation():
    x, _, shift, scale, _, _ = make_inputs(2, 5, 48, 3, torch.bfloat16)
    normed = F.layer_norm(x.float(), (48,), eps=1e-6).type_as(x)  # WanLayerNorm
    want = (normed.float() * (1 + scale) + shift).type_as(x)  # TurboDiffusion's block
    got = layernorm_modulate_ref(x, shift, scale, 1e-6)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert torch.equal(layernorm_modulate_ref(x, shift[:, 0], scale[:, 0]), got)  # [B, C] == [B, 1, C]
    assert layernorm_modulate_ref(x.float(), shift, scale, out_dtype=torch.bfloat16).dtype == torch.bfloat16


def test_gated_residual_ref_follows_torch_promotion_fp32_for_wan_and_bf16_for_turbo():
    x, y, _, _, gate, _ = make_inputs(2, 5, 48, 3, torch.bfloat16)
    wan = gated_residual_ref(x, y, gate)  # Wan: fp32 gate -> fp32 stream
    assert wan.dtype == torch.float32 and torch.equal(wan, x + y * gate)
    turbo = gated_residual_ref(x, y, gate.to(x.dtype))  # Turbo: e.type_as(x)
    assert turbo.dtype == torch.bfloat16 and torch.equal(turbo, x + y * gate.bfloat16())


def test_rope_tables_split_pairs_22_21_21_for_head_dim_128_in_t_h_w_raster_order():
    cos, sin = rope_cos_sin(3, 4, 5, 128)
    assert cos.shape == sin.shape == (60, 64) and cos.dtype == torch.float32
    angles = torch.atan2(sin.double(), cos.double())
    tok = lambda t, h, w: (t * 4 + h) * 5 + w  # noqa: E731
    # pair 0 is the t axis (freq 1), pair 22 the h axis, pair 43 the w axis: each moves only with its own axis
    assert angles[tok(1, 0, 0), 0] == pytest.approx(1.0) and angles[tok(0, 1, 0), 0] == 0
    assert angles[tok(0, 1, 0), 22] == pytest.approx(1.0) and angles[tok(1, 0, 1), 22] == 0
    assert angles[tok(0, 0, 1), 43] == pytest.approx(1.0) and angles[tok(1, 1, 0), 43] == 0
    assert angles[tok(2, 0, 0), 21] == pytest.approx(2 * 10000 ** (-42 / 44), rel=1e-6)  # last t pair


def wan_rope_apply_float64(x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Wan2.1's complex-number RoPE (rope_params per axis, freqs split c-2(c//3), c//3, c//3), float64."""
    B, L, H, D = x.shape
    c = D // 2

    def params(dim):
        f = torch.outer(torch.arange(64, dtype=torch.float64), 1.0 / 10000 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        return torch.polar(torch.ones_like(f), f)

    freqs = torch.cat([params(D - 4 * (D // 6)), params(2 * (D // 6)), params(2 * (D // 6))], dim=1)
    ft, fh, fw = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f, h, w = grid
    fi = torch.cat([ft[:f].view(f, 1, 1, -1).expand(f, h, w, -1), fh[:h].view(1, h, 1, -1).expand(f, h, w, -1),
                    fw[:w].view(1, 1, w, -1).expand(f, h, w, -1)], dim=-1).reshape(L, 1, -1)
    xc = torch.view_as_complex(x.double().reshape(B, L, H, -1, 2))
    return torch.view_as_real(xc * fi).flatten(3)


def test_rmsnorm_rope_ref_is_wans_rmsnorm_then_wans_complex_rope():
    B, H, D, grid = 2, 2, 24, (2, 3, 4)
    L = grid[0] * grid[1] * grid[2]
    x, _, _, _, _, weight = make_inputs(B, L, H * D, H, torch.float32)
    cos, sin = rope_cos_sin(*grid, D)
    xf = x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6)).type_as(x) * weight  # WanRMSNorm
    want = wan_rope_apply_float64(normed.view(B, L, H, D), grid)
    got = rmsnorm_rope_ref(x, weight, cos, sin, H)
    assert got.shape == (B, L, H, D)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_references_agree_with_the_turbo_batch_dit_layers():
    """The DiT (turbo_batch/models/dit.py) can swap its norm/modulate/rope/residual lines for these ops:
    modulate and residual bit for bit; its RMSNorm (one rounding, after the weight) within one rounding."""
    dit = pytest.importorskip("turbo_batch.models.dit")
    B, H, D, grid = 2, 2, 16, (2, 2, 3)
    L = 12
    for dtype in (torch.float32, torch.bfloat16):
        x, y, shift, scale, gate, weight = make_inputs(B, L, H * D, H, dtype, seed=3)
        ln = dit.LayerNorm(H * D, 1e-6, elementwise_affine=False)
        assert torch.equal(layernorm_modulate_ref(x, shift, scale), dit.modulate(ln(x), shift, scale))
        assert torch.equal(gated_residual_ref(x, y, gate.to(dtype)), x + y * gate.to(dtype))
        rms = dit.RMSNorm(H * D, 1e-6)
        rms.weight.data.copy_(weight)
        no_rotation = torch.ones(L, D // 2), torch.zeros(L, D // 2)
        normed = rmsnorm_rope_ref(x, rms.weight, *no_rotation, H, weight_in_fp32=True).flatten(2)
        assert within_one_rounding(normed, rms(x))
    tables = dit.rope_tables(D, grid, "cpu")
    cos, sin = (tables.real, tables.imag) if torch.is_tensor(tables) else tables
    c2, s2 = rope_cos_sin(*grid, D)
    torch.testing.assert_close(cos.reshape(L, D // 2).float(), c2, rtol=0, atol=1e-7)
    torch.testing.assert_close(sin.reshape(L, D // 2).float(), s2, rtol=0, atol=1e-7)


def test_affine_layernorm_and_plain_rmsnorm_refs_are_the_dit_layers_bit_for_bit():
    dit = pytest.importorskip("turbo_batch.models.dit")
    for dtype in (torch.float32, torch.bfloat16):
        x, _, shift, _, _, weight = make_inputs(2, 7, 48, 3, dtype, seed=4)
        ln = dit.LayerNorm(48, 1e-6, elementwise_affine=True)
        ln.weight.data.copy_(weight)
        ln.bias.data.copy_(shift.flatten()[:48])
        assert torch.equal(layernorm_affine_ref(x, ln.weight, ln.bias), ln(x))
        rms = dit.RMSNorm(48, 1e-6)
        rms.weight.data.copy_(weight)
        assert within_one_rounding(rmsnorm_ref(x, rms.weight, weight_in_fp32=True), rms(x))
        rotated = rmsnorm_rope_ref(x, weight, torch.ones(7, 8), torch.zeros(7, 8), 3)
        assert torch.equal(rmsnorm_ref(x, weight).to(dtype), rotated.flatten(2))


def test_layernorm_modulate_fp8_ref_quantizes_the_modulated_rows_rounded_to_the_activation_dtype():
    x, _, shift, scale, _, _ = make_inputs(2, 5, 48, 3, torch.bfloat16)
    x, shift = with_degenerate_rows(x, shift)
    q, s = layernorm_modulate_fp8_ref(x, shift, scale)
    want = quantize_per_token_fp8_ref(layernorm_modulate_ref(x, shift, scale).reshape(-1, 48))
    assert q.shape == (10, 48) and q.dtype == torch.float8_e4m3fn and s.shape == (10,)
    assert same_fp8((q, s), want)
    assert bool((q.view(torch.uint8)[7] == 0).all()) and s[7] == 2.0**-40 / 448  # the all-zero row
    assert same_fp8(layernorm_modulate_fp8(x, shift, scale), (q, s))  # CPU: the public op is the composition


def test_layernorm_affine_fp8_ref_quantizes_the_affine_rows_rounded_to_the_activation_dtype():
    x, _, shift, scale, _, _ = make_inputs(2, 5, 48, 3, torch.bfloat16)
    weight, bias = 1.0 + scale[0, 0], shift[0, 0]
    q, s = layernorm_affine_fp8_ref(x, weight, bias)
    want = quantize_per_token_fp8_ref(layernorm_affine_ref(x, weight, bias).reshape(-1, 48))
    assert q.shape == (10, 48) and q.dtype == torch.float8_e4m3fn and s.shape == (10,)
    assert same_fp8((q, s), want)
    assert same_fp8(layernorm_affine_fp8(x, weight, bias), (q, s))  # CPU: the public op is the composition


def test_launch_configs_give_each_row_whole_warps_and_each_thread_one_16_byte_vector_per_segment():
    """The contract of the tiling (see kernels/norms.py): per-row sums stay inside a warp up to 2048 bf16 columns,
    no lanes are padded at the DiT widths, and ROWS x SEG = 32 lanes x one vector x num_warps, which pins Triton's
    register layout, so the fused fp8 variant reduces exactly like the plain kernel."""
    assert norm_launch_config(1536) == {"ROWS": 4, "SEG": 256, "NSEG": 6, "num_warps": 4}  # Wan 1.3B
    assert norm_launch_config(5120) == {"ROWS": 1, "SEG": 1024, "NSEG": 5, "num_warps": 4}  # Wan 14B: 4 warps/row
    for C in (512, 1536, 2048, 3072, 5120):
        for elem_bytes in (2, 4):
            cfg = norm_launch_config(C, elem_bytes)
            assert cfg["ROWS"] * cfg["SEG"] == 32 * (16 // elem_bytes) * cfg["num_warps"], (C, elem_bytes, cfg)
            assert cfg["SEG"] * cfg["NSEG"] == C and cfg == norm_launch_config(C, elem_bytes)
            assert cfg["SEG"] * cfg["NSEG"] // (32 * cfg["num_warps"] // cfg["ROWS"]) <= 64  # values/thread/row
    for C in (16, 48, 96, 200):  # narrower than a warp's vectors: equal segments, at most one vector per thread
        cfg = norm_launch_config(C)
        assert cfg["ROWS"] * cfg["SEG"] <= 32 * 8 * cfg["num_warps"] and cfg["SEG"] * cfg["NSEG"] >= C
    assert row_tiling(1536) == (512, 3) and row_tiling(96) == (32, 3) and row_tiling(5120) == (1024, 5)
    assert old_launch_config(1536) == {"ROWS": 1, "SEG": 2048, "NSEG": 1, "num_warps": 8}  # the launch before


def test_public_ops_on_cpu_are_the_references():
    x, y, shift, scale, gate, weight = make_inputs(1, 6, 32, 2, torch.bfloat16)
    cos, sin = rope_cos_sin(1, 2, 3, 16)
    assert torch.equal(layernorm_modulate(x, shift, scale), layernorm_modulate_ref(x, shift, scale))
    assert torch.equal(gated_residual(x, y, gate), gated_residual_ref(x, y, gate))
    assert torch.equal(rmsnorm_rope(x, weight, cos, sin, 2), rmsnorm_rope_ref(x, weight, cos, sin, 2))
    assert torch.equal(rmsnorm(x, weight), rmsnorm_ref(x, weight))
    assert torch.equal(layernorm_affine(x, weight, shift.flatten()), layernorm_affine_ref(x, weight, shift.flatten()))
    out = x.clone()
    gated_residual(out, y, gate.bfloat16(), out=out)
    assert torch.equal(out, gated_residual_ref(x, y, gate.bfloat16()))


# ============================================================================================ Triton (interpreter)
INTERPRET_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from kernels import norms as N, fp8_linear as F8
    from tests.test_norms import make_inputs, within_one_rounding, mismatch, same_fp8, with_degenerate_rows
    bf16, f32 = torch.bfloat16, torch.float32
    out = {}
    B, H, D = 2, 3, 32
    cos, sin = N.rope_cos_sin(2, 2, 3, D)
    L = 12
    for xd in (bf16, f32):
        x, y, shift, scale, gate, weight = make_inputs(B, L, H * D, H, xd, seed=7)
        for od in (None, bf16):
            a = N.layernorm_modulate_triton(x, shift, scale, 1e-6, od)
            b = N.layernorm_modulate_ref(x, shift[:, 0], scale, 1e-6, od)
            out[f"ln_{xd}_{od}"] = [a.dtype == b.dtype, within_one_rounding(a, b), mismatch(a, b) if b.dtype == bf16 else 0.0]
        for yd, gd in ((bf16, bf16), (bf16, f32), (f32, f32), (f32, bf16)):
            yy, gg = y.to(yd), gate.to(gd)
            a, b = N.gated_residual_triton(x, yy, gg), N.gated_residual_ref(x, yy, gg)
            out[f"gr_{xd}_{yd}_{gd}"] = [a.dtype == b.dtype, bool(torch.equal(a, b)), 0.0]
        for wd in (f32, bf16):
            for fused_w in (False, True):
                a = N.rmsnorm_rope_triton(x, weight.to(wd), cos, sin, H, 1e-6, None, fused_w)
                b = N.rmsnorm_rope_ref(x, weight.to(wd), cos, sin, H, 1e-6, None, fused_w)
                ok = a.dtype == b.dtype and a.shape == b.shape
                out[f"rr_{xd}_{wd}_{fused_w}"] = [ok, within_one_rounding(a, b), mismatch(a, b) if b.dtype == bf16 else 0.0]
                a = N.rmsnorm_triton(x, weight.to(wd), 1e-6, None, fused_w)
                b = N.rmsnorm_ref(x, weight.to(wd), 1e-6, None, fused_w)
                ok = a.dtype == b.dtype and a.shape == b.shape
                out[f"rn_{xd}_{wd}_{fused_w}"] = [ok, within_one_rounding(a, b), mismatch(a, b) if b.dtype == bf16 else 0.0]
        a, b = N.layernorm_affine_triton(x, weight, shift[0, 0]), N.layernorm_affine_ref(x, weight, shift[0, 0])
        out[f"la_{xd}"] = [a.dtype == b.dtype, within_one_rounding(a, b), mismatch(a, b) if b.dtype == bf16 else 0.0]
    x, y, _, _, gate, _ = make_inputs(B, L, H * D, H, bf16, seed=8)
    want = N.gated_residual_ref(x, y, gate.to(bf16))
    N.gated_residual_triton(x, y, gate.to(bf16), out=x)
    out["gr_in_place"] = [True, bool(torch.equal(x, want)), 0.0]
    # the fused LayerNorm -> fp8 kernels (modulated: norm1/norm2; affine: the cross-attention's norm3) against the two
    # kernels each replaces: narrow rows, the 1.3B width (6 segments of 256, a warp per row), a padded width, and a
    # row count that is no multiple of ROWS
    for C, L2 in ((96, 12), (1536, 9), (200, 37)):
        for xd in (bf16, f32):
            x, _, shift, scale, _, _ = make_inputs(2, L2, C, 1, xd, seed=C)
            x, shift = with_degenerate_rows(x, shift)
            for key, name, args in (("fp8", "layernorm_modulate", (x, shift, scale)),
                                    ("fp8a", "layernorm_affine", (x, 1.0 + scale[0, 0], shift[0, 0]))):
                fused = getattr(N, name + "_fp8")(*args)
                composed = F8.quantize_per_token_fp8(getattr(N, name)(*args).reshape(-1, C))
                ref = getattr(N, name + "_fp8_ref")(*args)
                out[f"{key}_{C}_{xd}"] = [same_fp8(fused, composed), same_fp8(fused, getattr(N, name + "_fp8_triton")(
                    *args)), mismatch(fused[0].view(torch.uint8), ref[0].view(torch.uint8)),
                    float(((fused[1] - ref[1]).abs() / ref[1]).max())]
    # a row's bits do not depend on which rows share its program: drop the first token (so every program holds
    # other rows) and compare what remains
    x, y, shift, scale, gate, weight = make_inputs(1, 21, 1536, 12, bf16, seed=9)
    c, s = N.rope_cos_sin(1, 3, 7, 128)
    out["rows_independent"] = [
        bool(torch.equal(N.layernorm_modulate_triton(x, shift, scale)[:, 1:],
                         N.layernorm_modulate_triton(x[:, 1:], shift, scale))),
        same_fp8([t[1:] for t in N.layernorm_modulate_fp8_triton(x, shift, scale)],
                 N.layernorm_modulate_fp8_triton(x[:, 1:], shift, scale)),
        bool(torch.equal(N.rmsnorm_rope_triton(x, weight, c, s, 12)[:, 1:],
                         N.rmsnorm_rope_triton(x[:, 1:], weight, c[1:], s[1:], 12))),
        bool(torch.equal(N.rmsnorm_triton(x, weight)[:, 1:], N.rmsnorm_triton(x[:, 1:], weight))),
    ]
    # the old one-row-per-program launch (kept for benchmarks) computes the same op
    a = N.layernorm_modulate_triton(x, shift, scale, config=N.old_launch_config(1536))
    b = N.rmsnorm_rope_triton(x, weight, c, s, 12, config=N.old_launch_config(1536))
    out["old_launch"] = [within_one_rounding(a, N.layernorm_modulate_ref(x, shift, scale)),
                         within_one_rounding(b, N.rmsnorm_rope_ref(x, weight, c, s, 12), 2, 1.2)]
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


def test_layernorm_modulate_kernel_in_interpreter_mode_matches_the_reference_within_one_rounding(interpreted):
    cases = {k: v for k, v in interpreted.items() if k.startswith("ln_")}
    assert len(cases) == 4
    for name, (dtype_ok, close, frac) in cases.items():
        assert dtype_ok and close and frac < 0.05, (name, frac)


def test_gated_residual_kernel_in_interpreter_mode_is_bitwise_the_reference_for_every_dtype_mix(interpreted):
    cases = {k: v for k, v in interpreted.items() if k.startswith("gr_")}
    assert len(cases) == 9
    for name, (dtype_ok, equal, _) in cases.items():
        assert dtype_ok and equal, name


def test_rmsnorm_rope_kernel_in_interpreter_mode_matches_the_reference_within_one_rounding(interpreted):
    cases = {k: v for k, v in interpreted.items() if k.startswith("rr_")}
    assert len(cases) == 8
    for name, (dtype_ok, close, frac) in cases.items():
        assert dtype_ok and close and frac < 0.05, (name, frac)


def test_affine_layernorm_and_plain_rmsnorm_kernels_in_interpreter_mode_match_their_references(interpreted):
    cases = {k: v for k, v in interpreted.items() if k.startswith(("la_", "rn_"))}
    assert len(cases) == 10
    for name, (dtype_ok, close, frac) in cases.items():
        assert dtype_ok and close and frac < 0.05, (name, frac)


def test_fused_layernorm_fp8_kernels_in_interpreter_mode_are_bitwise_the_two_kernels_they_replace(interpreted):
    """And against the torch composition (another mean/variance summation order) only the rare rounding flips
    differ: a few codes, and scales within one bf16 rounding of the row's amax."""
    cases = {k: v for k, v in interpreted.items() if k.startswith(("fp8_", "fp8a_"))}
    assert len(cases) == 12  # modulated (norm1, norm2) and affine (norm3) LayerNorms
    for name, (same_as_composition, same_as_triton_entry, codes_differing, scale_rel) in cases.items():
        assert same_as_composition and same_as_triton_entry, name
        assert codes_differing < 0.05 and scale_rel <= 2.0**-7, (name, codes_differing, scale_rel)


def test_a_rows_bits_do_not_depend_on_the_rows_sharing_its_program_in_interpreter_mode(interpreted):
    assert interpreted["rows_independent"] == [True, True, True, True]


def test_the_old_one_row_launch_is_still_reachable_for_benchmarks(interpreted):
    assert interpreted["old_launch"] == [True, True]


# ============================================================================================ GPU
DIT_SHAPES = [(1, 4096, 1536, 12), (2, 1000, 5120, 40)]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("B,L,C,H", DIT_SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_norm_kernels_on_cuda_match_the_references(B, L, C, H, dtype):
    x, y, shift, scale, gate, weight = make_inputs(B, L, C, H, dtype, device="cuda")
    cos, sin = rope_cos_sin(1, 1, L, C // H, device="cuda")
    for od in (None, torch.bfloat16):
        a, b = layernorm_modulate(x, shift, scale, 1e-6, od), layernorm_modulate_ref(x, shift, scale, 1e-6, od)
        assert modulated_within_one_rounding(a, b, x, scale) and (a.dtype == torch.float32 or mismatch(a, b) < 0.02)
    bias = shift.flatten()[:C]
    a, b = layernorm_affine(x, weight, bias), layernorm_affine_ref(x, weight, bias)
    assert within_one_rounding(a, b) and (a.dtype == torch.float32 or mismatch(a, b) < 0.02)
    for fused_w in (False, True):  # weight in x's dtype: the output is x's dtype (fp32 would expose n's rounding)
        w = weight.to(dtype)
        a, b = rmsnorm(x, w, weight_in_fp32=fused_w), rmsnorm_ref(x, w, weight_in_fp32=fused_w)
        # two roundings: the normalized value (unless weight_in_fp32) and the output; CUDA's reduction order differs
        assert within_one_rounding(a, b, roundings=2, scale=w.float().abs().max().item()) and (a.dtype == torch.float32 or mismatch(a, b) < 0.02)
    for gd in (torch.float32, dtype):
        assert torch.equal(gated_residual(x, y, gate.to(gd)), gated_residual_ref(x, y, gate.to(gd)))
    for w in (weight, weight.to(dtype)):
        for fused_w in (False, True):
            a = rmsnorm_rope(x, w, cos, sin, H, weight_in_fp32=fused_w)
            b = rmsnorm_rope_ref(x, w, cos, sin, H, weight_in_fp32=fused_w)
            assert within_one_rounding(a, b, roundings=2, scale=w.float().abs().max().item()) and (a.dtype == torch.float32 or mismatch(a, b) < 0.02)


@pytest.mark.gpu
@cuda
def test_fused_norm_kernels_on_cuda_give_the_same_bits_twice():
    B, L, C, H = DIT_SHAPES[0]
    x, y, shift, scale, gate, weight = make_inputs(B, L, C, H, torch.bfloat16, device="cuda")
    cos, sin = rope_cos_sin(1, 1, L, C // H, device="cuda")
    for fn in (lambda: layernorm_modulate(x, shift, scale), lambda: gated_residual(x, y, gate),
               lambda: rmsnorm_rope(x, weight, cos, sin, H), lambda: rmsnorm(x, weight),
               lambda: layernorm_affine(x, weight, shift.flatten())):
        assert torch.equal(fn(), fn())
    if torch.cuda.get_device_capability() >= (8, 9):
        assert same_fp8(layernorm_modulate_fp8(x, shift, scale), layernorm_modulate_fp8(x, shift, scale))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("B,L,C,H", DIT_SHAPES)
def test_fused_layernorm_fp8_on_cuda_is_bitwise_the_modulate_then_quantize_kernels(B, L, C, H):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton's fp8e4nv needs sm89+")
    x, _, shift, scale, _, _ = make_inputs(B, L, C, H, torch.bfloat16, device="cuda")
    x, shift = with_degenerate_rows(x, shift)
    fused = layernorm_modulate_fp8(x, shift, scale)
    assert same_fp8(fused, quantize_per_token_fp8(layernorm_modulate(x, shift, scale).reshape(-1, C)))
    assert fused[0].shape == (B * L, C) and fused[1].shape == (B * L,)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("B,L,C,H", [*DIT_SHAPES, (1, 300, 1000, 10)])  # the last: rows end inside a segment
def test_on_cuda_the_hardware_casts_give_the_integer_roundings_bits(B, L, C, H, monkeypatch):
    """The kernels round to bf16 with the hardware cast and let the e4m3 cast saturate by itself (fewer
    instructions: these norms are issue-bound); the interpreter-safe integer rounding and explicit clamp must
    give the very same bits."""
    import kernels.fp8_linear as fp8
    import kernels.norms as norms

    x, y, shift, scale, gate, weight = make_inputs(B, L, C, H, torch.bfloat16, device="cuda")
    x, shift = with_degenerate_rows(x, shift)
    cos, sin = rope_cos_sin(1, 1, L, C // H, device="cuda")
    bias = shift[0].flatten()
    ops = [lambda: layernorm_modulate(x, shift, scale), lambda: layernorm_affine(x, weight, bias),
           lambda: rmsnorm_rope(x, weight, cos, sin, H), lambda: rmsnorm(x, weight),
           lambda: gated_residual(x, y, gate.bfloat16())]
    if torch.cuda.get_device_capability() >= (8, 9):
        ops += [lambda: layernorm_modulate_fp8(x, shift, scale), lambda: layernorm_affine_fp8(x, weight, bias),
                lambda: quantize_per_token_fp8(x.reshape(-1, C))]
    hardware = [op() for op in ops]
    monkeypatch.setattr(norms, "HW_ROUNDING", False)
    for flag in ("SATURATING_CAST", "HW_FP8_CVT"):  # then a clamp before the hardware cast, then integer rounding
        monkeypatch.setattr(fp8, flag, False)
        for op, want in zip(ops, hardware):
            got = op()
            assert same_fp8(got, want) if isinstance(got, tuple) else torch.equal(got, want)


@pytest.mark.gpu
@cuda
def test_on_cuda_a_rows_bits_do_not_depend_on_the_rows_sharing_its_program():
    B, L, C, H = DIT_SHAPES[0]
    x, _, shift, scale, _, weight = make_inputs(B, L, C, H, torch.bfloat16, device="cuda")
    cos, sin = rope_cos_sin(1, 1, L, C // H, device="cuda")
    assert torch.equal(layernorm_modulate(x, shift, scale)[:, 1:], layernorm_modulate(x[:, 1:], shift, scale))
    assert torch.equal(rmsnorm_rope(x, weight, cos, sin, H)[:, 1:], rmsnorm_rope(x[:, 1:], weight, cos[1:], sin[1:], H))
    if torch.cuda.get_device_capability() >= (8, 9):
        q, s = layernorm_modulate_fp8(x, shift, scale)
        assert same_fp8((q[1:], s[1:]), layernorm_modulate_fp8(x[:, 1:], shift, scale))
