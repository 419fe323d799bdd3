"""FP8 vs bf16 GEMMs at the Wan DiT's shapes, and the fused norm kernels vs their torch references (one GPU).

For each Linear shape of the 1.3B DiT (M = 32760 tokens: 480p, 81 frames) and the 14B DiT (M = 75600: 720p),
times with `triton.testing.do_bench` (median):
  bf16       F.linear(x, W, b) in bf16
  fp8        FP8Linear forward: fused per-token quant kernel + row-wise `_scaled_mm` (what the model runs)
  mm         `_scaled_mm` alone on pre-quantized x (the GEMM's share)
  mm_fast    the same with use_fast_accum=True (Hopper's faster, less precise accumulation)
  quant      the quant kernel alone
then the fused elementwise kernels at [1, 32760, 1536]. Random data; prints one compact table per part.
Run from the repository root (about a minute on an H100/H200):

    python bench/bench_linear.py            # add --quick for fewer repetitions
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernels.fp8_linear import FP8Linear, quantize_per_token_fp8  # noqa: E402
from kernels.norms import (  # noqa: E402
    gated_residual,
    gated_residual_ref,
    layernorm_modulate,
    layernorm_modulate_ref,
    rmsnorm_rope,
    rmsnorm_rope_ref,
    rope_cos_sin,
)

# (model, layer, M, K, N)
GEMMS = [
    ("1.3B", "self q/k/v/o, cross q/o", 32760, 1536, 1536),
    ("1.3B", "ffn up", 32760, 1536, 8960),
    ("1.3B", "ffn down", 32760, 8960, 1536),
    ("1.3B", "cross k/v (512 text)", 512, 1536, 1536),
    ("14B", "self q/k/v/o, cross q/o", 75600, 5120, 5120),
    ("14B", "ffn up", 75600, 5120, 13824),
    ("14B", "ffn down", 75600, 13824, 5120),
]


def bench(fn, rep: int) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=max(5, rep // 4), rep=rep, return_mode="median")


def gemm_table(rep: int, gemms=GEMMS, dev: str = "cuda") -> None:
    print(f"\nGEMMs (ms median, TFLOP/s in brackets; speedup = bf16 / fp8)")
    head = f"{'model':5} {'layer':25} {'M':>6} {'K':>6} {'N':>6} | {'bf16':>14} {'fp8':>14} {'mm':>14} {'mm_fast':>14} {'quant':>7} | {'speedup':>7} {'rel.err':>7}"
    print(head)
    print("-" * len(head))
    for model, layer, M, K, N in gemms:
        g = torch.Generator(device=dev).manual_seed(M + K + N)
        x = torch.randn(M, K, device=dev, generator=g, dtype=torch.bfloat16)
        lin = torch.nn.Linear(K, N, device=dev, dtype=torch.bfloat16)
        fp8 = FP8Linear.from_linear(lin)
        xq, xs = quantize_per_token_fp8(x)
        wt, ws, b = fp8.weight.t(), fp8.weight_scale.view(1, -1), fp8.bias
        mm = lambda fast: torch._scaled_mm(xq, wt, scale_a=xs.view(-1, 1), scale_b=ws, bias=b,  # noqa: E731
                                           out_dtype=torch.bfloat16, use_fast_accum=fast)
        t = {
            "bf16": bench(lambda: F.linear(x, lin.weight, lin.bias), rep),
            "fp8": bench(lambda: fp8(x), rep),
            "mm": bench(lambda: mm(False), rep),
            "mm_fast": bench(lambda: mm(True), rep),
            "quant": bench(lambda: quantize_per_token_fp8(x), rep),
        }
        ref = F.linear(x, lin.weight, lin.bias).float()
        err = ((fp8(x).float() - ref).norm() / ref.norm()).item()
        flops = 2.0 * M * N * K
        cell = lambda ms: f"{ms:7.3f} [{flops / ms / 1e9:4.0f}]"  # noqa: E731
        print(f"{model:5} {layer:25} {M:6d} {K:6d} {N:6d} | {cell(t['bf16'])} {cell(t['fp8'])} {cell(t['mm'])} "
              f"{cell(t['mm_fast'])} {t['quant']:7.3f} | {t['bf16'] / t['fp8']:6.2f}x {err:7.4f}")
        del x, lin, fp8, xq, xs, ref
        torch.cuda.empty_cache()


def norm_table(rep: int, B: int = 1, grid=(21, 30, 52), C: int = 1536, H: int = 12, dev: str = "cuda") -> None:
    L = grid[0] * grid[1] * grid[2]  # 480p 81 frames: 21 x 30 x 52 = 32760 tokens
    g = torch.Generator(device=dev).manual_seed(0)
    x16 = torch.randn(B, L, C, device=dev, generator=g, dtype=torch.bfloat16)
    x32 = x16.float()
    y16 = torch.randn(B, L, C, device=dev, generator=g, dtype=torch.bfloat16)
    shift, scale, gate = (0.1 * torch.randn(B, 1, C, device=dev, generator=g) for _ in range(3))
    weight = torch.ones(C, device=dev, dtype=torch.bfloat16)
    cos, sin = rope_cos_sin(*grid, C // H, device=dev)
    cases = [
        # name, fused, reference, bytes moved by an ideal kernel
        ("layernorm_modulate bf16", lambda: layernorm_modulate(x16, shift, scale),
         lambda: layernorm_modulate_ref(x16, shift, scale), 2 * x16.numel() * 2),
        ("layernorm_modulate fp32->bf16", lambda: layernorm_modulate(x32, shift, scale, out_dtype=torch.bfloat16),
         lambda: layernorm_modulate_ref(x32, shift, scale, out_dtype=torch.bfloat16), x16.numel() * 6),
        ("gated_residual bf16 (Turbo)", lambda: gated_residual(x16, y16, gate.bfloat16()),
         lambda: gated_residual_ref(x16, y16, gate.bfloat16()), 3 * x16.numel() * 2),
        ("gated_residual fp32 stream (Wan)", lambda: gated_residual(x32, y16, gate),
         lambda: gated_residual_ref(x32, y16, gate), x16.numel() * 10),
        ("rmsnorm_rope bf16", lambda: rmsnorm_rope(x16, weight, cos, sin, H),
         lambda: rmsnorm_rope_ref(x16, weight, cos, sin, H), 2 * x16.numel() * 2),
    ]
    print(f"\nFused elementwise kernels at [{B}, {L}, {C}] (ms median; GB/s of the ideal one-read-one-write traffic)")
    head = f"{'op':34} | {'fused':>8} {'GB/s':>6} | {'torch ref':>9} | {'speedup':>7} {'max|diff|':>9}"
    print(head)
    print("-" * len(head))
    for name, fused, ref, nbytes in cases:
        tf, tr = bench(fused, rep), bench(ref, rep)
        diff = (fused().float() - ref().float()).abs().max().item()
        print(f"{name:34} | {tf:8.3f} {nbytes / tf / 1e6:6.0f} | {tr:9.3f} | {tr / tf:6.2f}x {diff:9.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing windows (rough numbers)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_linear.py needs a CUDA GPU")
    import triton

    cap = torch.cuda.get_device_capability()
    print(f"{torch.cuda.get_device_name()} (sm{cap[0]}{cap[1]}), torch {torch.__version__}, triton {triton.__version__}")
    if cap < (8, 9):
        sys.exit("row-wise FP8 _scaled_mm needs sm89+ (Ada/Hopper)")
    rep = 40 if args.quick else 200  # do_bench's rep is milliseconds of timed runs per measurement
    with torch.no_grad():
        gemm_table(rep)
        norm_table(rep)


if __name__ == "__main__":
    main()
