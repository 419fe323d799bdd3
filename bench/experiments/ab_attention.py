"""A/B of the fused SLA kernel against a saved copy of an earlier kernels/sla.py, interleaved in one process.

    python bench/experiments/ab_attention.py OLD_SLA_PY [--rounds 6]

Prints per-round medians (triton do_bench) of the fused kernel, the plan and the full op, old and new, and
whether the new kernel repeats the old bits. Save the old file first, e.g. `git show HEAD:kernels/sla.py > /tmp/old_sla.py`.
"""
import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from triton.testing import do_bench

from bench_attention import make_inputs

from kernels import sla


def load(path):
    spec = importlib.util.spec_from_file_location("sla_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--shape", default="1,32760,12,128")
    args = ap.parse_args()
    old = load(args.old)
    B, L, H, D = map(int, args.shape.split(","))
    q, k, v, w, b = make_inputs(B, L, H, D)  # the same inputs bench_attention.py times
    kept, kvw, ks, b32 = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    fns = {
        "old kernel": lambda: old.sla_sparse_attention(q, k, v, kept, kvw, ks, b32),
        "new kernel": lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ks, b32),
        "old plan": lambda: old.sla_triton_plan(q, k, v, w, b, 0.1),
        "new plan": lambda: sla.sla_triton_plan(q, k, v, w, b, 0.1),
        "old full op": lambda: old.sla_triton(q, k, v, w, b, 0.1),
        "new full op": lambda: sla.sla_triton(q, k, v, w, b, 0.1),
    }
    ref = fns["old kernel"]()
    out = fns["new kernel"]()
    print(f"new kernel: bitwise equal to old {torch.equal(out, ref)}, max diff {(out.float() - ref.float()).abs().max():.2e}")
    times = {n: [] for n in fns}
    for r in range(args.rounds):
        for n, fn in fns.items():
            times[n].append(do_bench(fn, warmup=10, rep=60, return_mode="median"))
        print(f"round {r}: " + "  ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()), flush=True)
    print("median: " + "  ".join(f"{n} {statistics.median(t):.3f}" for n, t in times.items()))


if __name__ == "__main__":
    main()
