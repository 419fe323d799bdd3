"""Where the Gluon GEMM's fused epilogue time goes (FFN up: GELU + fp8 quantization; o projection: gated residual).

    python bench/experiments/gluon_epilogue_ab.py [--models 1.3b,14b] [--rounds 5] [--no-ffn] [--no-oproj]

At the FFN up shape, the ping-pong Gluon GEMM (kernels/gemm_gluon.py) with a plain bf16 store (no GELU) and with
the GELU + fp8 quantization epilogue in each of `GELU_MODES`, beside cuBLAS's row-wise `_scaled_mm` alone; medians
of interleaved rounds (each round times every variant once with triton's do_bench, so clock and power drift hit all
alike). Then the numerics of each mode: the share of fp8 codes that differ from the exp2_div mode's, the largest
distance in e4m3 steps from the reference codes (`gelu_tanh_ref` of the emulated GEMM, quantized with the same
scales), and the hidden's relative L2 error against GELU of the fp32 GEMM output, dequantized.
At the bf16 o projection's shape (dim x dim): cuBLAS `F.linear` alone, the Gluon GEMM with a plain store and with
the gated residual epilogue (the DiT's route), and the Triton kernel's gated residual, in interleaved rounds.
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

from kernels.fp8_gemm import (  # noqa: E402
    GELU_QUANT_ROWS,
    RESIDUAL,
    STORE,
    ffn_hidden_scales,
    matmul_residual_triton,
    weight_row_l1_max,
)
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
# --sweep: the grouped tile order's group height (GLUON_GEMM GROUP_M, 8) and the ring depth (STAGES, 4)
SWEEP = {"group 4": dict(GROUP_M=4), "group 16": dict(GROUP_M=16), "group 32": dict(GROUP_M=32),
         "5 stages": dict(STAGES=5)}


def ordinal(codes: torch.Tensor) -> torch.Tensor:
    """e4m3fn codes as signed step counts from zero (the magnitude bits are monotonic in the value)."""
    b = codes.view(torch.uint8).int()
    return torch.where(b >= 128, -(b & 0x7F), b)


def interleaved(fns: dict, rounds: int, flops: int, title: str):
    """Median of `rounds` rounds, each timing every fn once (triton do_bench), printed with TFLOP/s."""
    times = {n: [] for n in fns}
    for _ in range(rounds):
        for n, fn in fns.items():
            times[n].append(triton.testing.do_bench(fn, warmup=10, rep=60))
    print(f"\n=== {title}, {rounds} rounds")
    for n, t in times.items():
        ms = statistics.median(t)
        print(f"  {n:40s} {ms:7.3f} ms  {flops / ms / 1e9:7.0f} TFLOP/s  rounds {' '.join(f'{v:.3f}' for v in t)}")


def oproj(model: str, rounds: int, sms: int, sweep: dict):
    M, D, _ = SHAPES[model]
    dev = "cuda"
    a = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
    w = (torch.randn(D, D, device=dev) * D**-0.5).bfloat16()
    b = (torch.randn(D, device=dev) * 0.1).bfloat16()
    res = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
    gate = torch.randn(1, D, device=dev).bfloat16()
    out = torch.empty_like(res)

    def gluon(epilogue, **kw):
        return lambda: launch_gluon_gemm(a, None, w, None, b, epilogue, a_mode=0, out=out, num_sms=sms, **kw)

    fns = {"cuBLAS F.linear alone": lambda: F.linear(a, w, b),
           "gluon plain store": gluon(STORE),
           "gluon gated residual (the DiT's route)": gluon(RESIDUAL, res=res, gate=gate, L=M),
           "triton gated residual": lambda: matmul_residual_triton(a, None, w, None, b, res, gate, M, out=out,
                                                                   config={"GLUON": False})}
    fns.update({f"gluon gated residual {name}": gluon(RESIDUAL, res=res, gate=gate, L=M, config=cfg)
                for name, cfg in sweep.items()})
    interleaved(fns, rounds, 2 * M * D * D, f"{model} o projection bf16 {M}x{D}x{D}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="1.3b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-ffn", action="store_true")
    ap.add_argument("--no-oproj", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also the tile-order group and ring depth of SWEEP")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    print(torch.cuda.get_device_name(), "| torch", torch.__version__, "| triton", triton.__version__)
    for model in args.models.split(","):
        if not args.no_oproj:
            oproj(model, args.rounds, sms, SWEEP if args.sweep else {})
        if args.no_ffn:
            continue
        M, D, H = SHAPES[model]
        x = torch.randn(M, D, device=dev, dtype=torch.bfloat16)
        xq, xs = quantize_per_token_fp8(x)
        w, ws = quantize_weight_fp8(torch.randn(H, D, device=dev) * D**-0.5)
        b = torch.randn(H, device=dev).bfloat16() * 0.1
        hs = ffn_hidden_scales(xs, weight_row_l1_max(w, ws), b.abs().max().float())
        h_bf16 = torch.empty(M, H, device=dev, dtype=torch.bfloat16)
        codes = {k: torch.empty(M, H, device=dev, dtype=FP8_DTYPE) for k in GELU_MODES}

        def gluon(epilogue, out, mode="exp2_div", **cfg):
            return lambda: launch_gluon_gemm(xq, xs, w, ws, b, epilogue, a_mode=1, out=out, qs=hs, num_sms=sms,
                                             config={"gelu": mode, **cfg})

        fns = {"cuBLAS _scaled_mm alone (bf16 out)": lambda: fp8_matmul(xq, xs, w, ws, b, use_fast_accum=True),
               "gluon plain store (bf16 out)": gluon(STORE, h_bf16)}
        fns.update({f"gluon GELU + quant, {m}": gluon(GELU_QUANT_ROWS, codes[m], m) for m in GELU_MODES})
        if args.sweep:
            fns.update({f"gluon GELU + quant, tanh_approx {name}": gluon(GELU_QUANT_ROWS, codes["tanh_approx"],
                                                                         "tanh_approx", **cfg)
                        for name, cfg in SWEEP.items()})
        interleaved(fns, args.rounds, 2 * M * D * H, f"{model} FFN up {M}x{H}x{D}")
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
