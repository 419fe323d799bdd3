"""Why does the VAE's RMS norm + SiLU pass run at ~1 TB/s when its bias + residual pass moves 3 TB/s? And what would
a faster one change in the bits?

The norm kernel computes every value of a power-of-two tile (C = 96 padded to 128 lanes) and divides in IEEE
arithmetic (the SiLU's y / (1 + exp(-y)), as torch does); both cost instructions, not bytes. Variants, at one decode
chunk's shape per width (4 frames written into a time-padded buffer, bf16 channels-last), timed with do_bench:

  tile          the kernel the VAE runs (`rms_norm_silu_triton(..., segments=False)`)
  seg R/W       the row as NSEG segments of SEG lanes (96 = 3 x 32), R rows a program, W warps, IEEE division
  seg R/W fast  the same with the approximate division in the SiLU

beside a copy of the same bytes (`out.copy_(x)`) as the bandwidth reference. For each: how many output values differ
from the tile kernel's and by how many bf16 steps at most.

    python bench/experiments/vae_norm_variants.py
"""
from __future__ import annotations

import torch

from kernels import vae_elementwise as E


def main() -> None:
    import argparse

    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="96,192,384")
    ap.add_argument("--launches", default="32/4,64/4,128/4,128/8", help="rows/warps of the segmented kernel")
    args = ap.parse_args()
    launches = [tuple(int(v) for v in launch.split("/")) for launch in args.launches.split(",")]
    shapes = {96: (480, 832), 192: (240, 416), 384: (120, 208)}
    print(torch.cuda.get_device_name())
    for c in (int(v) for v in args.widths.split(",")):
        h, w = shapes[c]
        g = torch.Generator(device="cuda").manual_seed(c)
        x = (torch.randn(1, c, 4, h, w, device="cuda", generator=g) * 3).bfloat16().contiguous(
            memory_format=torch.channels_last_3d)
        gamma = (torch.rand(c, 1, 1, 1, device="cuda", generator=g) + 0.5).bfloat16()
        bias = torch.randn(c, device="cuda", generator=g).bfloat16()
        buf = torch.empty(1, c, 6, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        out = buf[:, :, 2:]
        nbytes = 2 * x.numel() * 2
        runs = {"copy": lambda: out.copy_(x),
                "tile": lambda: E.rms_norm_silu_triton(x, gamma, True, out, bias, segments=False)}
        for rows, warps in launches:
            for fast in (False, True):
                runs[f"seg {rows}/{warps}{' fast' if fast else ''}"] = (
                    lambda rows=rows, warps=warps, fast=fast: E.rms_norm_silu_triton(
                        x, gamma, True, out, bias, rows_per_program=rows, num_warps=warps, fast_silu=fast))
        ref = E.rms_norm_silu_triton(x, gamma, True, None, bias, segments=False)
        ulp = torch.ldexp(torch.ones_like(ref, dtype=torch.float32), torch.frexp(ref.float()).exponent - 8)
        print(f"C={c} {h}x{w} ({nbytes / 1e6:.0f} MB moved)")
        for name, fn in runs.items():
            ms = do_bench(fn, warmup=10, rep=100)
            line = f"  {name:16} {ms:7.3f} ms  {nbytes / ms / 1e6:5.0f} GB/s"
            if name != "copy":
                y = fn().clone()
                steps = ((y.float() - ref.float()).abs() / ulp)
                line += f"  differ {(y != ref).float().mean().item():.2e}, max {steps.max().item():.0f} steps"
            print(line)


if __name__ == "__main__":
    main()
