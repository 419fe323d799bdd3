"""Would one FP8 GEMM for q, k and v (N = 3 * dim) beat three (N = dim each)? Row-wise `_scaled_mm` at the DiT's
self-attention shapes, fast accumulation, bf16 out, as FP8Linear runs them.

    python bench/experiments/qkv_fusion.py

Measured on an H200 (torch 2.11, session 5), so q/k/v stay three GEMMs: 1.3B 480p three 0.349 ms (1329 TFLOP/s)
vs one 0.342 ms (1.02x); 14B 720p 9.346 vs 9.289 ms (1.01x); the fused GEMM's column blocks had the same bits.
"""
import torch
from triton.testing import do_bench

SHAPES = {"1.3b 480p": (32760, 1536), "14b 720p": (75600, 5120)}


def scaled_mm(x, xs, w, ws, bias):
    return torch._scaled_mm(x, w.t(), scale_a=xs, scale_b=ws, bias=bias, out_dtype=torch.bfloat16,
                            use_fast_accum=True)


def main():
    for name, (m, dim) in SHAPES.items():
        x = torch.randn(m, dim, device="cuda").to(torch.float8_e4m3fn)
        xs = torch.rand(m, 1, device="cuda")
        ws3 = [torch.randn(dim, dim, device="cuda").to(torch.float8_e4m3fn) for _ in range(3)]
        ss3 = [torch.rand(1, dim, device="cuda") for _ in range(3)]
        bs3 = [torch.randn(dim, device="cuda").bfloat16() for _ in range(3)]
        w = torch.cat(ws3)
        s = torch.cat(ss3, dim=1)
        bias = torch.cat(bs3)
        three = lambda: [scaled_mm(x, xs, wi, si, bi) for wi, si, bi in zip(ws3, ss3, bs3)]
        one = lambda: scaled_mm(x, xs, w, s, bias)
        same = all(torch.equal(a, b) for a, b in zip(three(), one().split(dim, dim=1)))
        t3 = do_bench(three, warmup=10, rep=60, return_mode="median")
        t1 = do_bench(one, warmup=10, rep=60, return_mode="median")
        flop = 2 * m * dim * 3 * dim
        print(f"{name}: three GEMMs {t3:.3f} ms ({flop / t3 / 1e9:.0f} TFLOP/s), one fused {t1:.3f} ms "
              f"({flop / t1 / 1e9:.0f} TFLOP/s), {t3 / t1:.2f}x; same bits per column block: {same}")


if __name__ == "__main__":
    main()
