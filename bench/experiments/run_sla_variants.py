"""Experimental SLA attention-kernel variants against the production kernel: error, repeat bits, median ms.

Negative results kept so they can be rerun (H100 80GB HBM3, torch 2.11, Triton 3.6, 1x32760x12x128, top-k 0.1):
production 1.529-1.553 ms; poly (half the exponentials on the FMA pipe, FA4-style) 1.651; lookahead (QK of the
next pair issued before this pair's softmax, FA3-style intra-warpgroup overlap) 1.888 (3 stages 1.812);
lookahead + poly 1.961; ws (`tl.range(warp_specialize=True)` with device-side TMA descriptors) 1.580, w4 4.216.
SDPA (cuDNN) 11.52 ms in the same run.

    python bench/experiments/run_sla_variants.py [variant ...]          # GPU
    TRITON_INTERPRET=1 python bench/experiments/run_sla_variants.py     # CPU correctness, float32, small shape
"""
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import sla_variants as sv
import torch

from kernels import sla

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
dev = "cpu" if INTERP else "cuda"
DT = torch.float32 if INTERP else torch.bfloat16

def inputs(B, L, H, D, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed)
    slow = torch.randn(B, L // 96 + 1, H, D, generator=g, device=dev).repeat_interleave(96, dim=1)[:, :L]
    q = (torch.randn(B, L, H, D, generator=g, device=dev) + slow).to(DT)
    k = (torch.randn(B, L, H, D, generator=g, device=dev) + 0.5 * slow).to(DT)
    v = torch.randn(B, L, H, D, generator=g, device=dev).to(DT)
    w = torch.randn(D, D, generator=g, device=dev) / math.sqrt(D)
    bias = 0.1 * torch.randn(D, generator=g, device=dev)
    return q, k, v, w, bias

def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()

VARIANTS = {
    "base": {},
    "poly": {"poly": 1},
    "look": {"lookahead": True},
    "look+poly": {"lookahead": True, "poly": 1},
    "look s3": {"lookahead": True, "num_stages": 3},
    "look+poly s3": {"lookahead": True, "poly": 1, "num_stages": 3},
    "ws": {"ws": True},
    "ws+poly": {"ws": True, "poly": 1},
    "ws w4": {"ws": True, "num_warps": 4},
}

def main():
    shape = (1, 700, 2, 64) if INTERP else (1, 32760, 12, 128)
    topk = float(os.environ.get("TOPK", 0.6 if INTERP else 0.1))
    names = sys.argv[1:] or list(VARIANTS)
    q, k, v, w, bias = inputs(*shape)
    kept, kvw, ksum, b = sla.sla_triton_plan(q, k, v, w, bias, topk)
    prod = sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, b)
    ref = sla.sla_reference(q, k, v, w, bias, topk) if INTERP else None
    if not INTERP:
        from triton.testing import do_bench
        ms = lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))
        print(f"sdpa-default {ms(lambda: torch.nn.functional.scaled_dot_product_attention(qb, kb, vb)):.3f} ms", flush=True)
        del qb, kb, vb
        print(f"full op      {ms(lambda: sla.sla_triton(q, k, v, w, bias, topk)):.3f} ms", flush=True)
        print(f"plan         {ms(lambda: sla.sla_triton_plan(q, k, v, w, bias, topk)):.3f} ms", flush=True)
        print(f"production   {ms(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, b)):.3f} ms", flush=True)
    for name in names:
        kw = VARIANTS[name]
        try:
            out = sv.attention_variant(q, k, v, kept, kvw, ksum, b, **kw)
            again = sv.attention_variant(q, k, v, kept, kvw, ksum, b, **kw)
            line = f"{name:14s} err_vs_prod {rel(out, prod):.2e} repeat {torch.equal(out, again)} finite {bool(torch.isfinite(out).all())}"
            if ref is not None:
                line += f" err_vs_ref {rel(out, ref):.2e} (prod {rel(prod, ref):.2e})"
            if not INTERP:
                line += f"  {ms(lambda: sv.attention_variant(q, k, v, kept, kvw, ksum, b, **kw)):.3f} ms"
        except Exception as exc:
            line = f"{name:14s} FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        print(line, flush=True)

if __name__ == "__main__":
    main()
