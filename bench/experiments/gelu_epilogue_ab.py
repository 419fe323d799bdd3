"""Where the FFN up projection's fused epilogue time goes, and whether the hardware tanh pays, in one run.

    python bench/experiments/gelu_epilogue_ab.py [--models 1.3b,14b] [--rounds 5]

At the FFN up shape, the ping-pong Gluon GEMM (kernels/gemm_gluon.py) with a plain bf16 store (no GELU) and with
the GELU + fp8 quantization epilogue in each of `GELU_MODES`, beside cuBLAS's row-wise `_scaled_mm` alone; medians
of interleaved rounds (each round times every variant once with triton's do_bench, so clock and power drift hit all
alike). Then the numerics of each mode: the share of fp8 codes that differ from the exp2_div mode's, the largest
distance in e4m3 steps from the reference codes (`gelu_tanh_ref` of the emulated GEMM, quantized with the same
scales), and the hidden's relative L2 error against GELU of the fp32 GEMM output, dequantized.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kernels.fp8_gemm import GELU_QUANT_ROWS, STORE, ffn_hidden_scales, weight_row_l1_max  # noqa: E402
from kernels.fp8_linear import (  # noqa: E402
    FP8_DTYPE,
    fp8_matmul,
    fp8_matmul_emulated,
    quantize_per_token_fp8,
    quantize_weight_fp8,
)
from kernels.fp8_linear import gelu_tanh_ref  # noqa: E402
from kernels.gemm_gluon import GELU_MODES, launch_gluon_gemm  # noqa: E402

SHAPES = {"1.3b": (32760, 1536, 8960), "14b": (75600, 5120, 13824)}  # M, dim, ffn


def ordinal(codes: torch.Tensor) -> torch.Tensor:
    """e4m3fn codes as signed step counts from zero (the magnitude bits are monotonic in the value)."""
    b = codes.view(torch.uint8).int()
    return torch.where(b >= 128, -(b & 0x7F), b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="1.3b")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__)
    for model in args.models.split(","):
        M, D, H = SHAPES[model]
        x = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
        xq, xs = quantize_per_token_fp8(x)
        w, ws = quantize_weight_fp8(torch.randn(H, D, device=dev) * D**-0.5)
        b = torch.randn(H, device=dev).bfloat16() * 0.1
        hs = ffn_hidden_scales(xs, weight_row_l1_max(w, ws), b.abs().max().float())
        h_bf16 = torch.empty(M, H, device=dev, dtype=torch.bfloat16)
        codes = {k: torch.empty(M, H, device=dev, dtype=FP8_DTYPE) for k in GELU_MODES}

        def gluon(epilogue, out, mode="exp2_div"):
            return lambda: launch_gluon_gemm(xq, xs, w, ws, b, epilogue, a_mode=1, out=out, qs=hs, num_sms=sms,
                                             config={"gelu": mode})

        fns = {"cuBLAS _scaled_mm alone (bf16 out)": lambda: fp8_matmul(xq, xs, w, ws, b, use_fast_accum=True),
               "gluon plain store (bf16 out)": gluon(STORE, h_bf16)}
        fns.update({f"gluon GELU + quant, {m}": gluon(GELU_QUANT_ROWS, codes[m], m) for m in GELU_MODES})
        times = {n: [] for n in fns}
        for _ in range(args.rounds):
            for n, fn in fns.items():
                times[n].append(triton.testing.do_bench(fn, warmup=10, rep=60))
        flops = 2 * M * D * H
        print(f"\n=== {model} FFN up {M}x{H}x{D}, {args.rounds} rounds")
        for n, t in times.items():
            ms = statistics.median(t)
            print(f"  {n:40s} {ms:7.3f} ms  {flops / ms / 1e9:7.0f} TFLOP/s  rounds {' '.join(f'{v:.3f}' for v in t)}")
        h = fp8_matmul_emulated(xq, xs, w, ws, b)
        ref = F.gelu(h.float(), approximate="tanh")
        ref_codes = (gelu_tanh_ref(h).float() / hs[:, None]).clamp(-448, 448).to(FP8_DTYPE)
        for m, c in codes.items():
            differ = (c.view(torch.uint8) != codes["exp2_div"].view(torch.uint8)).float().mean().item()
            steps = (ordinal(c) - ordinal(ref_codes)).abs().max().item()
            err = ((c.float() * hs[:, None] - ref).norm() / ref.norm()).item()
            print(f"  {m:12s} codes differing from exp2_div {differ:.4%}, max steps from the reference {steps}, "
                  f"hidden rel. L2 vs GELU(fp32 GEMM) {err:.4e}")
        fns = codes = ref = ref_codes = h = h_bf16 = None
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
