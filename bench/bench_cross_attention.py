"""Cross-attention over a prompt's tokens with the padding collapsed into one key, against SDPA over all 512 rows.

    python bench/bench_cross_attention.py [--rows 64,128,192,256,320,384,448]

Wan attends to 512 text rows whatever the prompt's length; `kernels/cross_attention.py` attends to the prompt's rows
(bucketed to 64) plus one key standing for the rest. Per call, at the 1.3B 480p (32760 tokens, 12 heads) and 14B 720p
(75600 tokens, 40 heads) shapes, bf16, GPU time from CUDA-graph replays (`_timing.graph_median_ms`): SDPA over 512
rows (the baseline: what the DiT runs for a prompt that fills the window), our kernel over rows + 1 keys, and SDPA
over rows + 1 keys without the pad key's weight (a speed reference only: not the same function). Error: against the
float32 reference. `dit.COLLAPSE_MAX_ROWS` is set from this table: the most rows at which the kernel still wins.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _timing import graph_median_ms  # noqa: E402

from kernels.cross_attention import cross_attention, cross_attention_reference  # noqa: E402

SHAPES = {"1.3b 480p": (32760, 12), "14b 720p": (75600, 40)}


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="64,128,192,256,320,384,448")
    ap.add_argument("--text-len", type=int, default=512)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__}")
    for name, (L, H) in SHAPES.items():
        q = torch.randn(1, L, H, 128, device="cuda", dtype=torch.bfloat16)
        k_all = torch.randn(1, args.text_len, H, 128, device="cuda", dtype=torch.bfloat16)
        v_all = torch.randn_like(k_all)
        base = graph_median_ms(lambda: sdpa(q, k_all, v_all))
        print(f"\n{name}: SDPA over {args.text_len} rows {base:.4f} ms")
        print(f"{'rows':>6}{'ours ms':>10}{'vs base':>9}{'SDPA rows+1':>13}{'rel err':>10}{'SDPA err':>10}")
        for rows in (int(r) for r in args.rows.split(",")):
            pad = args.text_len - rows
            k, v = k_all[:, : rows + 1].contiguous(), v_all[:, : rows + 1].contiguous()
            ours = graph_median_ms(lambda: cross_attention(q, k, v, pad))
            short = graph_median_ms(lambda: sdpa(q, k, v))
            ref = cross_attention_reference(q, k, v, pad)
            expanded = [torch.cat([t[:, :-1], t[:, -1:].expand(-1, pad, -1, -1)], 1) for t in (k, v)]
            err, sdpa_err = rel(cross_attention(q, k, v, pad), ref), rel(sdpa(q, *expanded), ref)
            print(f"{rows:>6}{ours:>10.4f}{base / ours:>8.2f}x{short:>13.4f}{err:>10.2e}{sdpa_err:>10.2e}")
            del ref, expanded

if __name__ == "__main__":
    main()
