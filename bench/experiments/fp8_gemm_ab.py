"""Triton GEMMs with fused epilogues (kernels/fp8_gemm.py) against what the unfused DiT runs, at the Wan shapes.

For each model (1.3B 480p: M = 32760; 14B 720p: M = 75600), in one process, with the fixed configurations of
`gemm_config` (pass --sweep for the alternatives that were measured to pick them):
  gemm        `_scaled_mm` (row-wise, fast accumulation) vs the Triton GEMM with a plain bf16 store (dim x dim)
  ffn up      `_scaled_mm` + the fused GELU + per-token quant kernel vs the Triton GEMM with GELU + quantization
              by bounded per-token scales (`ffn_hidden_scales`)
  ffn down    `_scaled_mm` + `gated_residual` vs the Triton GEMM adding the gated residual in place
  o (bf16)    `F.linear` + `gated_residual` vs the Triton bf16 GEMM adding the gated residual
Each row prints ms (median of do_bench), TFLOP/s and, where there is one, the relative error against a reference.
Session 11 measured 1 x 128 group scales for the FFN hidden here too (the down GEMM promoting each K step): 1.07-1.25
ms against 0.67 ms at 1.3B, so that path was dropped (bench/HISTORY.md). Run from the repository root:

    python bench/experiments/fp8_gemm_ab.py [--models 1.3b,14b] [--rep 30] [--sweep] [--gluon-sweep]
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
    matmul_residual_triton,
    matmul_triton,
    weight_row_l1_max,
)
from kernels.fp8_linear import (  # noqa: E402
    fp8_matmul,
    quantize_gelu_per_token_fp8,
    quantize_per_token_fp8,
    quantize_weight_fp8,
)
from kernels.norms import gated_residual  # noqa: E402

SHAPES = {"1.3b": (32760, 1536, 8960), "14b": (75600, 5120, 13824)}
TILE = dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8)
SWEEP_FP8 = {"128x256x128 s3 flat": dict(TILE, num_stages=3, FLATTEN=True),
             "128x256x128 s3": dict(TILE, num_stages=3, FLATTEN=False),
             "128x256x128 s4 flat": dict(TILE, num_stages=4, FLATTEN=True),
             "128x128x128 s4 flat": dict(TILE, BLOCK_N=128, num_stages=4, FLATTEN=True),
             # epilogue overlap by occupancy: two programs per SM, one's epilogue under the other's MMAs
             "128x128x128 w4 s3 2/SM": dict(TILE, BLOCK_N=128, num_warps=4, num_stages=3, FLATTEN=True,
                                            PROGRAMS_PER_SM=2),
             "128x128x128 w4 s2 2/SM": dict(TILE, BLOCK_N=128, num_warps=4, num_stages=2, FLATTEN=True,
                                            PROGRAMS_PER_SM=2),
             "128x128x128 w8 s3 2/SM": dict(TILE, BLOCK_N=128, num_stages=3, FLATTEN=True, PROGRAMS_PER_SM=2),
             "64x256x128 w4 s3 2/SM": dict(TILE, BLOCK_M=64, num_warps=4, num_stages=3, FLATTEN=True,
                                           PROGRAMS_PER_SM=2),
             # ... and by Triton's warp specialization (Hopper: Triton >= 3.5), loads in their own warps
             "128x256x128 s3 ws": dict(TILE, num_stages=3, FLATTEN=False, WARP_SPECIALIZE=True),
             "128x256x128 s4 ws": dict(TILE, num_stages=4, FLATTEN=False, WARP_SPECIALIZE=True),
             "128x128x128 s4 ws": dict(TILE, BLOCK_N=128, num_stages=4, FLATTEN=False, WARP_SPECIALIZE=True),
             "128x128x128 w4 s3 ws": dict(TILE, BLOCK_N=128, num_warps=4, num_stages=3, FLATTEN=False,
                                          WARP_SPECIALIZE=True)}
SWEEP_BF16 = {"128x256x64 s3 flat": dict(TILE, BLOCK_K=64, num_stages=3, FLATTEN=True),
              "128x128x64 s4 flat": dict(TILE, BLOCK_N=128, BLOCK_K=64, num_stages=4, FLATTEN=True),
              "128x128x64 w4 s4 2/SM": dict(TILE, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=4, FLATTEN=True,
                                            PROGRAMS_PER_SM=2),
              "128x256x64 s4 ws": dict(TILE, BLOCK_K=64, num_stages=4, FLATTEN=False, WARP_SPECIALIZE=True),
              "128x128x64 s4 ws": dict(TILE, BLOCK_N=128, BLOCK_K=64, num_stages=4, FLATTEN=False,
                                       WARP_SPECIALIZE=True)}


def bench(fn, rep):
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=rep, return_mode="median")


def rel(a, b):
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def attempt(name, fn, rep, flops, check=None):
    try:
        out = fn()
        err = f"{check(out):9.2e}" if check else ""
        ms = bench(fn, rep)
        print(f"  {name:36} {ms:8.3f} ms {flops / ms / 1e9:7.0f} TFLOP/s {err}", flush=True)
    except Exception as exc:  # noqa: BLE001 - a refused configuration is a result
        print(f"  {name:36} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:90]}", flush=True)


# Gluon kernel variants (--gluon-sweep): ring depth and consumer register budget around GLUON_GEMM; 64 x 256 consumer
# tiles were measured slower (they spill: FFN up 1.126 ms vs 0.870, bench/HISTORY.md)
SWEEP_GLUON = {f"gluon s{s} r{r}": {"GLUON": True, "STAGES": s, "consumer_regs": r}
               for s, r in ((3, 232), (5, 232), (4, 224), (4, 240))}


def configs(sweep, table, gluon_sweep=False):
    """The default route, both kernels by name (the Gluon ping-pong kernel: kernels/gemm_gluon.py), and with
    --sweep the Triton configurations that were measured to pick `gemm_config`, with --gluon-sweep Gluon's."""
    return {"default": None, "triton": {"GLUON": False}, "gluon": {"GLUON": True},
            **(table if sweep else {}), **(SWEEP_GLUON if gluon_sweep else {})}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="1.3b,14b")
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--gluon-sweep", action="store_true")
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
        work = resid.clone()
        v3 = lambda t: t.view(1, M, D)  # noqa: E731

        print(f"-- gemm {M}x{D}x{D} row-wise fp8, bf16 store")
        f = 2 * M * D * D
        ref = fp8_matmul(xq, xs, w_dd, ws_dd, b_d)
        attempt("cuBLAS _scaled_mm fast", lambda: fp8_matmul(xq, xs, w_dd, ws_dd, b_d, use_fast_accum=True), args.rep, f)
        for name, cfg in configs(args.sweep, SWEEP_FP8, args.gluon_sweep).items():
            attempt(f"triton {name}", lambda cfg=cfg: matmul_triton(xq, xs, w_dd, ws_dd, b_d, config=cfg), args.rep, f,
                    lambda o: rel(o, ref))

        print(f"-- ffn up {M}x{H}x{D} + GELU + quant")
        f = 2 * M * D * H
        h_ref = fp8_matmul(xq, xs, w_up, ws_up, b_h)
        hs = ffn_hidden_scales(xs, weight_row_l1_max(w_up, ws_up), b_h.abs().max().float())
        attempt("cuBLAS alone", lambda: fp8_matmul(xq, xs, w_up, ws_up, b_h, use_fast_accum=True), args.rep, f)
        attempt("cuBLAS + gelu_quant kernel (unfused)",
                lambda: quantize_gelu_per_token_fp8(fp8_matmul(xq, xs, w_up, ws_up, b_h, use_fast_accum=True)),
                args.rep, f)
        for name, cfg in configs(args.sweep, SWEEP_FP8, args.gluon_sweep).items():
            attempt(f"triton gelu_quant_rows {name}",
                    lambda cfg=cfg: fp8_matmul_gelu_quant_rows_triton(xq, xs, w_up, ws_up, b_h, hs, config=cfg),
                    args.rep, f)
        hq = fp8_matmul_gelu_quant_rows_triton(xq, xs, w_up, ws_up, b_h, hs)
        hq_tok, hs_tok = quantize_gelu_per_token_fp8(h_ref)

        print(f"-- ffn down {M}x{D}x{H} + gated residual (in place)")
        f = 2 * M * H * D
        ref = resid.float() + (fp8_matmul(hq, hs, w_dn, ws_dn, b_d).float() * gate.float()).bfloat16().float()
        attempt("cuBLAS alone", lambda: fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn, b_d, use_fast_accum=True), args.rep, f)
        attempt("cuBLAS + gated_residual (unfused)",
                lambda: gated_residual(v3(work), v3(fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn, b_d, use_fast_accum=True)),
                                       gate, out=v3(work)), args.rep, f)
        for name, cfg in configs(args.sweep, SWEEP_FP8, args.gluon_sweep).items():
            attempt(f"triton residual {name}",
                    lambda cfg=cfg: matmul_residual_triton(hq, hs, w_dn, ws_dn, b_d, resid, gate, M, out=work,
                                                           config=cfg), args.rep, f, lambda o: rel(o, ref))

        print(f"-- o projection bf16 {M}x{D}x{D} + gated residual")
        f = 2 * M * D * D
        wb = torch.randn(D, D, device=dev).bfloat16() * D**-0.5
        ref = resid.float() + (F.linear(x, wb, b_d).float() * gate.float()).bfloat16().float()
        attempt("cuBLAS F.linear alone", lambda: F.linear(x, wb, b_d), args.rep, f)
        attempt("F.linear + gated_residual (unfused)",
                lambda: gated_residual(v3(work), v3(F.linear(x, wb, b_d)), gate, out=v3(work)), args.rep, f)
        for name, cfg in configs(args.sweep, SWEEP_BF16, args.gluon_sweep).items():
            attempt(f"triton bf16 residual {name}",
                    lambda cfg=cfg: matmul_residual_triton(x, None, wb, None, b_d, resid, gate, M, out=work,
                                                           config=cfg), args.rep, f, lambda o: rel(o, ref))
        full = (F.gelu(h_ref.float(), approximate="tanh") @ (w_dn.float() * ws_dn[:, None]).t())
        print(f"  ffn down error vs an fp32 hidden: bounded row scales {rel(fp8_matmul(hq, hs, w_dn, ws_dn), full):.3e}"
              f"  exact per-token amax {rel(fp8_matmul(hq_tok, hs_tok, w_dn, ws_dn), full):.3e}")
        del x, xq, xs, hq, hs, hq_tok, hs_tok, work, resid, full, h_ref, ref
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
