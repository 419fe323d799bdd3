"""Specification of the epilogue-fused Triton GEMMs (kernels/fp8_gemm.py): each equals its float32 reference
(the emulated GEMM, then the references of the ops fused into it), does not depend on the launch configuration or
on which other rows share the call, and repeats its bits. On CPU the kernels run in Triton's interpreter."""
from __future__ import annotations

import textwrap

import pytest
import torch

from _helpers import run_interpreted
from kernels.fp8_gemm import (
    GROUP,
    fp8_matmul_grouped_emulated,
    quantize_gelu_groups_fp8_ref,
    quantize_groups_fp8_ref,
    residual_ref,
)
from kernels.fp8_linear import quantize_per_token_fp8_ref, quantize_rows_fp8_ref, quantize_weight_fp8

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


# ============================================================================================ references (CPU)
def test_grouped_quantization_is_row_quantization_of_each_128_wide_piece_with_group_major_scales():
    x = torch.randn(5, 3 * GROUP) * torch.tensor([1.0, 100.0, 0.01]).repeat_interleave(GROUP)
    q, s = quantize_groups_fp8_ref(x)
    assert q.shape == x.shape and s.shape == (3, 5)
    for g in range(3):
        qg, sg = quantize_rows_fp8_ref(x[:, g * GROUP:(g + 1) * GROUP])
        assert torch.equal(bits(q[:, g * GROUP:(g + 1) * GROUP]), bits(qg)) and torch.equal(s[g], sg)


def test_grouped_scales_keep_the_small_channels_of_a_row_that_one_scale_per_row_flushes_to_subnormals():
    x = torch.randn(64, 2 * GROUP) * torch.tensor([1e-4, 10.0]).repeat_interleave(GROUP)
    qg, sg = quantize_groups_fp8_ref(x)
    grouped = (qg.float().view(64, 2, GROUP) * sg.t().unsqueeze(-1)).view_as(x)
    qr, sr = quantize_per_token_fp8_ref(x)
    per_row = qr.float() * sr[:, None]
    small = slice(0, GROUP)
    assert rel_err(grouped[:, small], x[:, small]) < 0.05 < rel_err(per_row[:, small], x[:, small])


def test_grouped_quantization_needs_k_to_be_a_multiple_of_the_group():
    with pytest.raises(ValueError, match="multiple of 128"):
        quantize_groups_fp8_ref(torch.randn(2, 200))


def test_the_grouped_gemm_emulation_is_the_float32_product_of_the_dequantized_operands():
    torch.manual_seed(0)
    x, w = torch.randn(7, 2 * GROUP), torch.randn(48, 2 * GROUP)
    xq, xs = quantize_groups_fp8_ref(x)
    wq, ws = quantize_weight_fp8(w)
    a = xq.float().view(7, 2, GROUP) * xs.t().unsqueeze(-1)
    want = (a.view(7, -1) @ (wq.float() * ws[:, None]).t()).bfloat16()
    assert rel_err(fp8_matmul_grouped_emulated(xq, xs, wq, ws), want) < 1e-3


def test_the_residual_reference_rounds_the_gated_product_to_bf16_before_the_sum_and_indexes_gates_by_batch():
    x, y = torch.randn(6, 4).bfloat16(), torch.randn(6, 4).bfloat16()
    gate = torch.randn(2, 4).bfloat16()
    want = torch.cat([x[:3] + y[:3] * gate[0], x[3:] + y[3:] * gate[1]])  # torch's bf16 promotion
    assert torch.equal(residual_ref(x, y, gate, 3), want)
    assert torch.equal(residual_ref(x, y, None, 3), x + y)


# ============================================================================================ kernels (interpreter)
INTERPRET_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from kernels.fp8_gemm import *
    from kernels.fp8_linear import quantize_per_token_fp8_ref, quantize_weight_fp8, fp8_matmul_emulated, gelu_tanh_ref
    def bits(t):
        return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16)
    def same(a, b):
        return bool(torch.equal(bits(a), bits(b)))
    def close(a, b):  # equal almost everywhere; elsewhere off by fp32 summation order (< a bf16 ulp of the largest)
        d = (a.float() - b.float()).abs()
        return bool(d.max() <= b.float().abs().max() * 2**-8 and (d > 0).float().mean() < 0.01)
    torch.manual_seed(0)
    small = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=2, num_stages=2, num_warps=4, FLATTEN=True)
    wide = dict(small, BLOCK_N=256, BLOCK_M=32, GROUP_M=1, FLATTEN=False)
    M, K, N, N2 = 150, 256, 256, 128
    x = torch.randn(M, K)
    xq, xs = quantize_per_token_fp8_ref(x)
    wq, ws = quantize_weight_fp8(torch.randn(N, K) * 0.06)
    b = (torch.randn(N) * 0.1).bfloat16()
    out = {}
    y = matmul_triton(xq, xs, wq, ws, b, config=small)
    out["rowwise_store"] = close(y, fp8_matmul_emulated(xq, xs, wq, ws, b))
    out["store_config_independent"] = same(y, matmul_triton(xq, xs, wq, ws, b, config=wide))
    out["rows_independent"] = same(y[:37], matmul_triton(xq[:37], xs[:37], wq, ws, b, config=small))
    hq, hs = fp8_matmul_gelu_quant_triton(xq, xs, wq, ws, b, config=small)
    rq, rs = quantize_gelu_groups_fp8_ref(y)
    out["gelu_quant_of_its_gemm"] = same(hq, rq) and bool(torch.equal(hs, rs))
    hq2, hs2 = fp8_matmul_gelu_quant_triton(xq, xs, wq, ws, b, config=wide)
    out["gelu_quant_config_independent"] = same(hq, hq2) and bool(torch.equal(hs, hs2))
    hsr = ffn_hidden_scales(xs, weight_row_l1_max(wq, ws), b.abs().max().float())
    hqr = fp8_matmul_gelu_quant_rows_triton(xq, xs, wq, ws, b, hsr, config=small)
    out["gelu_quant_rows_of_its_gemm"] = same(hqr, quantize_gelu_rows_fp8_ref(y, hsr))
    g = gelu_tanh_ref(fp8_matmul_emulated(xq, xs, wq, ws, b)).float()
    out["row_bound_holds"] = bool((g.abs().amax(1) <= 448 * hsr).all())
    w2q, w2s = quantize_weight_fp8(torch.randn(N2, N) * 0.06)
    b2 = (torch.randn(N2) * 0.1).bfloat16()
    y2 = matmul_triton(hq, hs, w2q, w2s, b2, config=small)
    out["grouped_store"] = close(y2, fp8_matmul_grouped_emulated(hq, hs, w2q, w2s, b2))
    res = torch.randn(M, N2).bfloat16()
    gate = torch.randn(2, N2).bfloat16()
    r = matmul_residual_triton(hq, hs, w2q, w2s, b2, res, gate, 75, out=torch.empty_like(res), config=small)
    out["gated_residual_of_its_gemm"] = same(r, residual_ref(res, y2, gate, 75))
    inplace = res.clone()
    matmul_residual_triton(hq, hs, w2q, w2s, b2, inplace, gate, 75, config=small)
    out["in_place_is_out_of_place"] = same(inplace, r)
    r0 = matmul_residual_triton(hq, hs, w2q, w2s, b2, res, None, out=torch.empty_like(res), config=small)
    out["plain_residual"] = same(r0, residual_ref(res, y2, None, M))
    xb, wb = x.bfloat16(), (torch.randn(N2, K) * 0.06).bfloat16()
    yb = matmul_triton(xb, None, wb, None, b2, config=small)
    out["bf16_store"] = close(yb, (xb.float() @ wb.float().t() + b2.float()).bfloat16())
    rb = matmul_residual_triton(xb, None, wb, None, b2, res, gate, 75, out=torch.empty_like(res), config=small)
    out["bf16_gated_residual"] = same(rb, residual_ref(res, yb, gate, 75))
    print("RESULT" + json.dumps(out))
    """
)
CASES = ["rowwise_store", "store_config_independent", "rows_independent", "gelu_quant_of_its_gemm",
         "gelu_quant_config_independent", "gelu_quant_rows_of_its_gemm", "row_bound_holds", "grouped_store", "gated_residual_of_its_gemm", "in_place_is_out_of_place",
         "plain_residual", "bf16_store", "bf16_gated_residual"]


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


@pytest.mark.parametrize("case", CASES)
def test_the_triton_gemms_in_interpreter_mode_meet_their_references(interpreted, case):
    """Store: the emulated GEMM within a bf16 ulp. Fused epilogues: bit for bit the references applied to the
    kernel's own GEMM output. Tile shapes and row counts never change a bit."""
    assert interpreted[case] is True


# ============================================================================================ GPU
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m,d,h", [(32760, 1536, 8960), (3000, 5120, 13824)])
def test_on_hopper_the_fused_ffn_tracks_cublas_and_the_references_and_repeats_its_bits(m, d, h):
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the Triton GEMMs need Hopper")
    from kernels.fp8_gemm import fp8_matmul_gelu_quant_triton, matmul_residual_triton
    from kernels.fp8_linear import fp8_matmul, quantize_per_token_fp8

    torch.manual_seed(0)
    x = torch.randn(m, d, device="cuda").bfloat16()
    xq, xs = quantize_per_token_fp8(x)
    wu, su = quantize_weight_fp8(torch.randn(h, d, device="cuda") * d**-0.5)
    wd, sd = quantize_weight_fp8(torch.randn(d, h, device="cuda") * h**-0.5)
    bu, bd = (torch.randn(h, device="cuda") * 0.1).bfloat16(), (torch.randn(d, device="cuda") * 0.1).bfloat16()
    hq, hs = fp8_matmul_gelu_quant_triton(xq, xs, wu, su, bu)
    h_cublas = fp8_matmul(xq, xs, wu, su, bu, use_fast_accum=False)
    rq, rs = quantize_gelu_groups_fp8_ref(h_cublas)
    deq = lambda q, s: q.float().view(m, -1, GROUP) * s.t().unsqueeze(-1)  # noqa: E731
    assert rel_err(deq(hq, hs), deq(rq, rs)) < 0.02  # GELU of a GEMM that sums in another order, then fp8
    res = torch.randn(m, d, device="cuda").bfloat16()
    gate = torch.randn(1, d, device="cuda").bfloat16()
    got = matmul_residual_triton(hq, hs, wd, sd, bd, res, gate, m, out=torch.empty_like(res))
    want = residual_ref(res, fp8_matmul_grouped_emulated(hq, hs, wd, sd, bd), gate, m)
    assert rel_err(got - res, want - res) < 0.01
    again = matmul_residual_triton(hq, hs, wd, sd, bd, res, gate, m, out=torch.empty_like(res))
    assert torch.equal(bits(got), bits(again))
    hq2, hs2 = fp8_matmul_gelu_quant_triton(xq, xs, wu, su, bu)
    assert torch.equal(bits(hq), bits(hq2)) and torch.equal(hs, hs2)


@pytest.mark.gpu
@cuda
def test_on_hopper_the_bf16_gemm_with_a_gated_residual_tracks_cublas():
    if torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the Triton GEMMs need Hopper")
    from kernels.fp8_gemm import matmul_residual_triton

    torch.manual_seed(0)
    x = torch.randn(4097, 1536, device="cuda").bfloat16()
    w = (torch.randn(1536, 1536, device="cuda") * 1536**-0.5).bfloat16()
    b = (torch.randn(1536, device="cuda") * 0.1).bfloat16()
    res = torch.randn(4097, 1536, device="cuda").bfloat16()
    gate = torch.randn(1, 1536, device="cuda").bfloat16()
    got = matmul_residual_triton(x, None, w, None, b, res, gate, 4097, out=torch.empty_like(res))
    want = residual_ref(res, torch.nn.functional.linear(x, w, b), gate, 4097)
    assert rel_err(got - res, want - res) < 0.01
