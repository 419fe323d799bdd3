"""The warp-specialized Gluon kernel (`kernels/sla_gluon.py`), overlapped and plain, against the Triton kernel.

    python bench/experiments/gluon_ab.py [--shape 1,32760,12,128] [--rounds 7] [--check]

Prints the two kernels' agreement (relative error against each other and the fp32 reference with --check), the
profiler's GPU time per launch of each, then interleaved medians of the kernel alone and the full op (plan +
kernel) for both, with dense SDPA (the faster backend) measured in the same rounds.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from ab_attention import time_interleaved
from bench_attention import make_inputs

from kernels import sla, sla_gluon


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


# name: (kernel, GLUON_ATTENTION["overlap"])
VARIANTS = {"triton": ("triton", False), "gluon": ("gluon", True), "gluon-plain": ("gluon", False)}


def sparse(q, k, v, plan, name):
    kernel, overlap = VARIANTS[name]
    sla_gluon.GLUON_ATTENTION["overlap"] = overlap
    return sla.sla_sparse_attention(q, k, v, *plan, kernel=kernel)


def full_op(q, k, v, w, b, name):
    return sparse(q, k, v, sla.sla_triton_plan(q, k, v, w, b, 0.1), name)


def profile_launches(fn, n=20):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    per = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per.setdefault(e.name[:60], []).append((e.time_range.end - e.time_range.start) / 1e3)
    for name, t in per.items():
        print(f"  {name}: {statistics.median(t):.4f} ms x {len(t) // n}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--check", action="store_true", help="also compare against the fp32 reference (slow at 14B)")
    args = ap.parse_args()
    shape = tuple(map(int, args.shape.split(",")))
    q, k, v, w, b = make_inputs(*shape)
    plan = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    outs = {name: sparse(q, k, v, plan, name) for name in VARIANTS}
    again = sparse(q, k, v, plan, "gluon")
    print(f"shape {shape}: gluon vs triton rel err {rel(outs['gluon'], outs['triton']):.2e}, "
          f"gluon finite {bool(outs['gluon'].isfinite().all())}, "
          f"gluon repeat bitwise {torch.equal(again, outs['gluon'])}, overlapped = plain bitwise {torch.equal(outs['gluon'], outs['gluon-plain'])}")
    if args.check:
        ref = sla.sla_reference(q.float(), k.float(), v.float(), w, b, 0.1)
        print(f"  vs fp32 reference: gluon {rel(outs['gluon'], ref):.2e}, triton {rel(outs['triton'], ref):.2e}")
        del ref
    for name in VARIANTS:
        print(f"{name} launches (profiler):")
        profile_launches(lambda name=name: sparse(q, k, v, plan, name))
    fns = {f"{name} kernel": (lambda name=name: sparse(q, k, v, plan, name)) for name in VARIANTS}
    fns.update({f"{name} full op": (lambda name=name: full_op(q, k, v, w, b, name)) for name in VARIANTS})
    time_interleaved(fns, q, k, v, args.rounds)


if __name__ == "__main__":
    main()
