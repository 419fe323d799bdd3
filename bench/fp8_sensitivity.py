"""Which Linears make FP8 inaccurate: the DiT output error for several `runtime.fp8_keep_bf16` choices.

Builds the Wan2.1 1.3B DiT with random weights in float32, runs it once in full precision, then once per keep-set
with every other block Linear in FP8 (the CPU's float32 quantize-dequantize emulation of the FP8 numerics, exact
accumulation; bench_forward.py measures the same on a GPU against bf16), and prints the relative L2 error of the output against full precision.
The default keep-set in `turbo_batch/models/quantize.py` was chosen from this table (CPU, 1 latent frame).

    python bench/fp8_sensitivity.py                 # CPU, ~40 s a row on 2 cores
    python bench/fp8_sensitivity.py --frames 1 --layers 30 --sets all default
    python bench/fp8_sensitivity.py --sets "all, centered o" "cross k,v, centered o"   # the centering rows
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from turbo_batch.models.dit import DiTConfig
from turbo_batch.models.dit_checkpoints import random_dit
from kernels.fp8_linear import FP8Linear, fp8_linear_emulated
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, name_matches, quantize_linears_

KEEP_SETS = {
    "all": (),
    "cross k,v": ("cross_attn.k", "cross_attn.v"),
    "cross k,v + self o": ("cross_attn.k", "cross_attn.v", "self_attn.o"),
    "cross": ("cross_attn",),
    "default": DEFAULT_KEEP_BF16,
    "cross + self o": ("cross_attn", "self_attn.o"),
    "cross + ffn.2": ("cross_attn", "ffn.2"),
    "attention": ("cross_attn", "self_attn"),
    "ffn": ("ffn",),
}
# Rows that instead quantize the o projections' inputs centered: x - mean_L(x) through fp8, mean_L(x) W^T added back
# in float32 as a bias (session 5: not enough to replace keeping them in bf16): (keep-set, centered Linears).
CENTERED_SETS = {
    "all, centered o": ((), ("self_attn.o", "cross_attn.o")),
    "cross k,v, centered o": (("cross_attn.k", "cross_attn.v"), ("self_attn.o", "cross_attn.o")),
}


def centered_fp8_forward(layer: FP8Linear, x: torch.Tensor) -> torch.Tensor:
    """The layer with its input centered over tokens before quantization (float32 emulation, like the CPU path)."""
    rows = x.reshape(-1, x.shape[-1]).float()
    mean = rows.mean(0)
    y = fp8_linear_emulated(rows - mean, layer.weight, layer.weight_scale, None).float()
    bias = mean @ layer.dequantized_weight().t() + (layer.bias.float() if layer.bias is not None else 0.0)
    return (y + bias.to(torch.bfloat16).float()).to(x.dtype).reshape(*x.shape[:-1], -1)


def build(model, name):
    """A copy of the model quantized for the row `name` (a KEEP_SETS or CENTERED_SETS key)."""
    keep, centered = CENTERED_SETS.get(name, (KEEP_SETS.get(name), ()))
    quantized = quantize_linears_(copy.deepcopy(model), keep=keep)
    for layer_name, layer in quantized.named_modules():
        if isinstance(layer, FP8Linear) and any(name_matches(layer_name, piece) for piece in centered):
            layer.forward = functools.partial(centered_fp8_forward, layer)
    return quantized


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--frames", type=int, default=1, help="latent frames (1 = 1560 tokens at 480p)")
    ap.add_argument("--sets", nargs="+", default=[*KEEP_SETS, *CENTERED_SETS], choices=[*KEEP_SETS, *CENTERED_SETS],
                    metavar="SET", help="rows to run, by name (names hold commas and spaces: quote each)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=args.layers)
    model = random_dit(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, args.frames, 60, 104, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 512, 4096, generator=g)
    with torch.no_grad():
        ref = model(x, t, ctx).float()
        print(f"1.3B DiT, {args.layers} blocks, {x.shape[2] * 30 * 52} tokens, float32 reference on CPU")
        print(f"{'kept in bf16':<22}{'fp8 Linears':>12}{'rel err':>10}{'s':>6}")
        for name in args.sets:
            quantized = build(model, name)
            n_fp8 = sum(type(m).__name__ == "FP8Linear" for m in quantized.modules())
            t0 = time.time()
            out = quantized(x, t, ctx).float()
            err = ((out - ref).norm() / ref.norm()).item()
            print(f"{name:<22}{n_fp8:>12}{err:>9.2%}{time.time() - t0:>6.0f}", flush=True)
            del quantized


if __name__ == "__main__":
    main()
