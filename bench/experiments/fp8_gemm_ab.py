"""Triton GEMMs with fused epilogues (kernels/fp8_gemm.py) against what the DiT runs today, at the Wan shapes.

For each model (1.3B 480p: M = 32760; 14B 720p: M = 75600) and each launch configuration, in one process:
  gemm        `_scaled_mm` (row-wise, fast accumulation) vs the Triton GEMM with a plain bf16 store (dim x dim)
  ffn up      `_scaled_mm` + the fused GELU + per-token quant kernel vs the Triton GEMM with GELU + 1x128 quant
  ffn down    `_scaled_mm` + `gated_residual` vs the Triton GEMM on grouped scales adding the gated residual
  o (bf16)    `F.linear` + `gated_residual` vs the Triton bf16 GEMM adding the gated residual
Each row prints ms (median of do_bench), TFLOP/s and the relative error against a float32 emulation; a
configuration the compiler refuses (shared memory) prints its error instead. Run from the repository root:

    python bench/experiments/fp8_gemm_ab.py [--models 1.3b,14b] [--rep 60]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels.fp8_gemm import (  # noqa: E402
    ffn_hidden_scales,
    fp8_matmul_gelu_quant_rows_triton,
    weight_row_l1_max,
    fp8_matmul_gelu_quant_triton,
    fp8_matmul_grouped_emulated,
    matmul_residual_triton,
    matmul_triton,
)
from kernels.fp8_linear import (  # noqa: E402
    fp8_matmul,
    quantize_gelu_per_token_fp8,
    quantize_per_token_fp8,
    quantize_weight_fp8,
)
from kernels.norms import gated_residual  # noqa: E402

SHAPES = {"1.3b": (32760, 1536, 8960), "14b": (75600, 5120, 13824)}
BASE = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_stages=3, num_warps=8, FLATTEN=True)
FP8_CONFIGS = {
    "128x256x128 s3 flat": BASE,
    "128x256x128 s3": dict(BASE, FLATTEN=False),
    "128x256x128 s4 flat": dict(BASE, num_stages=4),
    "128x128x128 s4 flat": dict(BASE, BLOCK_N=128, num_stages=4),
    "128x128x128 s5 flat": dict(BASE, BLOCK_N=128, num_stages=5),
    "128x256x128 s3 g16": dict(BASE, GROUP_M=16),
}
BF16_CONFIGS = {
    "128x256x64 s3 flat": dict(BASE, BLOCK_K=64),
    "128x256x64 s4 flat": dict(BASE, BLOCK_K=64, num_stages=4),
    "128x128x64 s4 flat": dict(BASE, BLOCK_N=128, BLOCK_K=64, num_stages=4),
    "128x128x64 s5 flat": dict(BASE, BLOCK_N=128, BLOCK_K=64, num_stages=5),
}


def bench(fn, rep):
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep, return_mode="median")


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def row(name, ms, flops, err=None, note=""):
    e = "" if err is None else f"{err:9.2e}"
    print(f"  {name:34} {ms:8.3f} ms {flops / ms / 1e9:7.0f} TFLOP/s {e:>9} {note}", flush=True)


def attempt(name, fn, rep, flops, check=None):
    try:
        out = fn()
        err = check(out) if check else None
        row(name, bench(fn, rep), flops, err)
    except Exception as exc:  # noqa: BLE001 - a refused configuration is a result
        print(f"  {name:34} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="1.3b,14b")
    ap.add_argument("--rep", type=int, default=60)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(), "| torch", torch.__version__)
    for model in args.models.split(","):
        M, D, H = SHAPES[model]
        print(f"\n=== {model}: M={M} dim={D} ffn={H}", flush=True)
        x = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
        xq, xs = quantize_per_token_fp8(x)
        w_dd, ws_dd = quantize_weight_fp8(torch.randn(D, D, device=dev) * D**-0.5)
        w_up, ws_up = quantize_weight_fp8(torch.randn(H, D, device=dev) * D**-0.5)
        w_dn, ws_dn = quantize_weight_fp8(torch.randn(D, H, device=dev) * H**-0.5)
        b_d = torch.randn(D, device=dev).bfloat16() * 0.1
        b_h = torch.randn(H, device=dev).bfloat16() * 0.1
        gate = torch.randn(1, D, device=dev).bfloat16()
        resid = torch.randn(M, D, device=dev, dtype=torch.bfloat16)

        print(f"-- gemm {M}x{D}x{D} row-wise fp8, bf16 store")
        f = 2 * M * D * D
        ref = (xq.float() @ w_dd.float().t()) * xs[:, None] * ws_dd[None, :] + b_d.float()
        attempt("cuBLAS _scaled_mm fast", lambda: fp8_matmul(xq, xs, w_dd, ws_dd, b_d, use_fast_accum=True), args.rep,
                f, lambda o: rel(o, ref))
        for name, cfg in FP8_CONFIGS.items():
            attempt(f"triton {name}", lambda cfg=cfg: matmul_triton(xq, xs, w_dd, ws_dd, b_d, config=cfg), args.rep, f,
                    lambda o: rel(o, ref))
        del ref

        print(f"-- ffn up {M}x{H}x{D} + GELU + quant")
        f = 2 * M * D * H
        h_ref = fp8_matmul(xq, xs, w_up, ws_up, b_h, use_fast_accum=False)
        attempt("cuBLAS alone", lambda: fp8_matmul(xq, xs, w_up, ws_up, b_h, use_fast_accum=True), args.rep, f)
        attempt("cuBLAS + gelu_quant kernel (today)",
                lambda: quantize_gelu_per_token_fp8(fp8_matmul(xq, xs, w_up, ws_up, b_h, use_fast_accum=True)),
                args.rep, f)
        for name, cfg in FP8_CONFIGS.items():
            attempt(f"triton store {name}", lambda cfg=cfg: matmul_triton(xq, xs, w_up, ws_up, b_h, config=cfg),
                    args.rep, f, lambda o: rel(o, h_ref))
            attempt(f"triton gelu_quant {name}",
                    lambda cfg=cfg: fp8_matmul_gelu_quant_triton(xq, xs, w_up, ws_up, b_h, config=cfg), args.rep, f)
        hs_rows = ffn_hidden_scales(xs, weight_row_l1_max(w_up, ws_up), b_h.abs().max().float())
        for name, cfg in FP8_CONFIGS.items():
            attempt(f"triton gelu_quant_rows {name}",
                    lambda cfg=cfg: fp8_matmul_gelu_quant_rows_triton(xq, xs, w_up, ws_up, b_h, hs_rows, config=cfg),
                    args.rep, f)
        hq, hs = fp8_matmul_gelu_quant_triton(xq, xs, w_up, ws_up, b_h)
        hq_tok, hs_tok = quantize_gelu_per_token_fp8(h_ref)
        hq_rows = fp8_matmul_gelu_quant_rows_triton(xq, xs, w_up, ws_up, b_h, hs_rows)
        del h_ref

        print(f"-- ffn down {M}x{D}x{H} + gated residual (in place)")
        f = 2 * M * H * D
        ref = fp8_matmul_grouped_emulated(hq, hs, w_dn, ws_dn, b_d).float()
        ref_res = resid.float() + (ref * gate.float()).bfloat16().float()
        attempt("cuBLAS alone (per-token A)", lambda: fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn, b_d, use_fast_accum=True),
                args.rep, f)
        work = resid.clone()
        attempt("cuBLAS + gated_residual (today)",
                lambda: gated_residual(work.view(1, M, D), fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn, b_d,
                                                                        use_fast_accum=True).view(1, M, D), gate,
                                       out=work.view(1, M, D)), args.rep, f)
        for name, cfg in FP8_CONFIGS.items():
            attempt(f"triton grouped store {name}",
                    lambda cfg=cfg: matmul_triton(hq, hs, w_dn, ws_dn, b_d, config=cfg), args.rep, f,
                    lambda o: rel(o, ref))
            attempt(f"triton grouped residual {name}",
                    lambda cfg=cfg: matmul_residual_triton(hq, hs, w_dn, ws_dn, b_d, resid, gate, M,
                                                           out=work, config=cfg),
                    args.rep, f, lambda o: rel(o, ref_res))
            attempt(f"triton rowwise residual {name}",
                    lambda cfg=cfg: matmul_residual_triton(hq_tok, hs_tok, w_dn, ws_dn, b_d, resid, gate, M,
                                                           out=work, config=cfg), args.rep, f)
        del ref, ref_res

        print(f"-- o projection bf16 {M}x{D}x{D} + gated residual")
        f = 2 * M * D * D
        wb = torch.randn(D, D, device=dev).bfloat16() * D**-0.5
        ref = F.linear(x, wb, b_d).float()
        ref_res = resid.float() + (ref * gate.float()).bfloat16().float()
        attempt("cuBLAS F.linear alone", lambda: F.linear(x, wb, b_d), args.rep, f)
        attempt("F.linear + gated_residual (today)",
                lambda: gated_residual(work.view(1, M, D), F.linear(x, wb, b_d).view(1, M, D), gate,
                                       out=work.view(1, M, D)), args.rep, f)
        for name, cfg in BF16_CONFIGS.items():
            attempt(f"triton bf16 store {name}", lambda cfg=cfg: matmul_triton(x, None, wb, None, b_d, config=cfg),
                    args.rep, f, lambda o: rel(o, ref))
            attempt(f"triton bf16 residual {name}",
                    lambda cfg=cfg: matmul_residual_triton(x, None, wb, None, b_d, resid, gate, M, out=work,
                                                           config=cfg),
                    args.rep, f, lambda o: rel(o, ref_res))
        # accuracy of the grouped FFN hidden vs per-token, through the down projection (same weights)
        full = (F.gelu(fp8_matmul(xq, xs, w_up, ws_up, b_h).float(), approximate="tanh") @
                (w_dn.float() * ws_dn[:, None]).t())
        print(f"  ffn down error vs fp32 hidden: grouped {rel(fp8_matmul_grouped_emulated(hq, hs, w_dn, ws_dn), full):.3e}"
              f"  per-token {rel(fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn), full):.3e}"
              f"  bound row scales {rel(fp8_matmul(hq_rows, hs_rows, w_dn, ws_dn), full):.3e}")
        del x, xq, xs, hq, hs, hq_tok, hs_tok, hq_rows, hs_rows, work, resid, full
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
