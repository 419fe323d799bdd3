"""Specification of the ping-pong Gluon GEMMs (kernels/gemm_gluon.py): every routed epilogue compiles for sm_90 with
the installed Triton, in one program per SM and without spilling, and a Gluon kernel that fails to build leaves the
work to the Triton kernel with one warning (checked on any machine); on Hopper each epilogue
meets the references of kernels/fp8_gemm.py as the Triton kernel does, whatever the number of tiles a program gets
(none, one, odd, many), repeats its bits, and tiles that would straddle two batch items fall back to the Triton
kernel. (Gluon has no interpreter, so results are checked on the GPU only.)"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels.fp8_gemm import ffn_hidden_scales, quantize_gelu_rows_fp8_ref, residual_ref, weight_row_l1_max
from kernels.fp8_linear import quantize_weight_fp8

hopper = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                            reason="needs a Hopper GPU")
GLUON, TRITON = {"GLUON": True}, {"GLUON": False}
ROOT = Path(__file__).resolve().parents[1]


def gluon_can_compile_offline() -> bool:
    try:
        from triton.experimental import gluon  # noqa: F401
        import triton

        return (Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump").exists()
    except ImportError:
        return False


FALLBACK_SCRIPT = """
import json, warnings, torch
import kernels.fp8_gemm as fg
from kernels.fp8_linear import quantize_per_token_fp8_ref, quantize_weight_fp8
calls = []
def broken_gluon(*args, **kwargs):
    calls.append(1)
    raise RuntimeError("this Triton's Gluon cannot compile the kernel")
fg.gluon_gemm_ok = lambda *args: True
fg.launch_gluon_gemm = broken_gluon
fg.set_gluon_gemms(True)
xq, xs = quantize_per_token_fp8_ref(torch.randn(64, 64))
wq, ws = quantize_weight_fp8(torch.randn(32, 64) * 0.1)
plain = fg.matmul_triton(xq, xs, wq, ws, None, config={"GLUON": False})
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    first = fg.matmul_triton(xq, xs, wq, ws, None)
    second = fg.matmul_triton(xq, xs, wq, ws, None)
try:
    fg.matmul_triton(xq, xs, wq, ws, None, config={"GLUON": True})
    forced_raises = False
except RuntimeError:
    forced_raises = True
print("RESULT" + json.dumps(dict(same=bool(torch.equal(first, plain) and torch.equal(second, plain)),
                                 warned=sum("Gluon kernel failed" in str(w.message) for w in caught),
                                 gluon_tries=len(calls), forced_raises=forced_raises)))
"""


def test_a_gluon_kernel_that_fails_falls_back_to_the_triton_kernel_once_and_loudly_unless_forced():
    from _helpers import run_interpreted

    got = run_interpreted(FALLBACK_SCRIPT, timeout=300)
    assert got == dict(same=True, warned=1, gluon_tries=2, forced_raises=True)  # one failed try, then one forced


@pytest.mark.skipif(not gluon_can_compile_offline(), reason="needs Triton with Gluon and its CUDA tools")
@pytest.mark.parametrize("flags", [["--epilogue", "1"], ["--epilogue", "2", "--gate", "--bf16"], ["--sla"],
                                   ["--sla8"]],
                         ids=["ffn-up-gelu-quant", "bf16-gated-residual", "sla-attention", "sla-attention-8bit"])
def test_the_gluon_kernels_compile_for_hopper_in_one_program_per_sm_without_spilling(flags):
    proc = subprocess.run([sys.executable, "bench/experiments/offline_gluon.py", *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    summary = re.search(r"shared (\d+) KB, REG:(\d+) STACK:(\d+)", proc.stdout)
    assert proc.returncode == 0 and summary, proc.stderr[-3000:]
    shared_kb, _, stack = map(int, summary.groups())
    assert shared_kb <= 227  # Hopper's shared memory per block
    assert stack == 0


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16)


def fp8_operands(m, k, n, seed=0):
    from kernels.fp8_linear import quantize_per_token_fp8

    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    xq, xs = quantize_per_token_fp8(x)
    wq, ws = quantize_weight_fp8(torch.randn(n, k, device="cuda", generator=g) * k**-0.5)
    b = (torch.randn(n, device="cuda", generator=g) * 0.1).bfloat16()
    return x, xq, xs, wq, ws, b


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m", [200, 3000, 32760])  # 24 tiles (< one per SM), odd counts per program, the 1.3B shape
def test_the_gluon_store_gemm_matches_cublas_and_the_triton_kernel(m):
    from kernels.fp8_gemm import matmul_triton
    from kernels.fp8_linear import fp8_matmul

    _, xq, xs, wq, ws, b = fp8_operands(m, 1536, 1536)
    got = matmul_triton(xq, xs, wq, ws, b, config=GLUON)
    assert rel_err(got, fp8_matmul(xq, xs, wq, ws, b, use_fast_accum=False)) < 2e-3
    assert rel_err(got, matmul_triton(xq, xs, wq, ws, b, config=TRITON)) < 1e-3
    assert torch.equal(bits(got), bits(matmul_triton(xq, xs, wq, ws, b, config=GLUON)))


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("m,d,h", [(32760, 1536, 8960), (3000, 5120, 13824)])
def test_the_gluon_ffn_meets_the_references_and_repeats_its_bits(m, d, h):
    from kernels.fp8_gemm import fp8_matmul_gelu_quant_rows_triton, matmul_residual_triton
    from kernels.fp8_linear import fp8_matmul

    _, xq, xs, wu, su, bu = fp8_operands(m, d, h)
    wd, sd = quantize_weight_fp8(torch.randn(d, h, device="cuda") * h**-0.5)
    bd = (torch.randn(d, device="cuda") * 0.1).bfloat16()
    hs = ffn_hidden_scales(xs, weight_row_l1_max(wu, su), bu.abs().max().float())
    hq = fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=GLUON)
    rq = quantize_gelu_rows_fp8_ref(fp8_matmul(xq, xs, wu, su, bu, use_fast_accum=False), hs)
    assert rel_err(hq.float(), rq.float()) < 0.02
    triton_hq = fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=TRITON)
    assert (hq.float() != triton_hq.float()).float().mean() < 1e-3  # the hardware tanh moves ~0.03% of the codes
    res = torch.randn(m, d, device="cuda").bfloat16()
    gate = torch.randn(1, d, device="cuda").bfloat16()
    got = matmul_residual_triton(hq, hs, wd, sd, bd, res, gate, m, out=torch.empty_like(res), config=GLUON)
    want = residual_ref(res, fp8_matmul(hq, hs, wd, sd, bd, use_fast_accum=False), gate, m)
    assert rel_err(got - res, want - res) < 0.01
    again = matmul_residual_triton(hq, hs, wd, sd, bd, res, gate, m, out=torch.empty_like(res), config=GLUON)
    assert torch.equal(bits(got), bits(again))
    assert torch.equal(bits(hq), bits(fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=GLUON)))
    in_place = res.clone()
    matmul_residual_triton(hq, hs, wd, sd, bd, in_place, gate, m, config=GLUON)
    assert torch.equal(bits(in_place), bits(got))


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("mode", ["exp2_div", "tanh_approx"])
def test_every_gelu_mode_of_the_ffn_epilogue_meets_the_reference_and_repeats_its_bits(mode):
    """The hardware tanh cancels for x << 0, but those values lie far below the row's fp8 scale: every mode keeps the
    reference's error and at most moves a code by one step here and there against the Triton kernel's math."""
    from kernels.fp8_gemm import fp8_matmul_gelu_quant_rows_triton
    from kernels.fp8_linear import fp8_matmul

    _, xq, xs, wu, su, bu = fp8_operands(4096, 1536, 8960)
    hs = ffn_hidden_scales(xs, weight_row_l1_max(wu, su), bu.abs().max().float())
    mode_cfg = {**GLUON, "gelu": mode}
    hq = fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=mode_cfg)
    rq = quantize_gelu_rows_fp8_ref(fp8_matmul(xq, xs, wu, su, bu, use_fast_accum=False), hs)
    assert rel_err(hq.float(), rq.float()) < 0.02
    exact = fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=TRITON)
    assert (hq.float() != exact.float()).float().mean() < 1e-3
    assert (ordinal(hq) - ordinal(exact)).abs().max() <= 1
    assert torch.equal(bits(hq), bits(fp8_matmul_gelu_quant_rows_triton(xq, xs, wu, su, bu, hs, config=mode_cfg)))


def ordinal(codes: torch.Tensor) -> torch.Tensor:
    """e4m3fn codes as signed step counts from zero."""
    b = codes.view(torch.uint8).int()
    return torch.where(b >= 128, -(b & 0x7F), b)


@pytest.mark.gpu
@hopper
@pytest.mark.parametrize("tokens", [4096, 1500])  # whole tiles per batch item: Gluon; otherwise: the Triton kernel
def test_gated_residuals_index_gates_by_batch_item_on_either_kernel(tokens):
    from kernels.fp8_gemm import matmul_residual_triton
    from kernels.gemm_gluon import gluon_gemm_ok

    torch.manual_seed(0)
    m = 2 * tokens
    x = torch.randn(m, 1536, device="cuda").bfloat16()
    w = (torch.randn(1536, 1536, device="cuda") * 1536**-0.5).bfloat16()
    b = (torch.randn(1536, device="cuda") * 0.1).bfloat16()
    res = torch.randn(m, 1536, device="cuda").bfloat16()
    gate = torch.randn(2, 1536, device="cuda").bfloat16()
    assert gluon_gemm_ok(x, w, res, gate, tokens) == (tokens % 128 == 0)
    got = matmul_residual_triton(x, None, w, None, b, res, gate, tokens, out=torch.empty_like(res), config=GLUON)
    want = residual_ref(res, torch.nn.functional.linear(x, w, b), gate, tokens)
    assert rel_err(got - res, want - res) < 0.01
