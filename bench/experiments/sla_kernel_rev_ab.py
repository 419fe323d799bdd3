"""The Gluon SLA kernel of this tree against a copy of `kernels/sla_gluon.py` from another revision, in one run.

    git show REV:kernels/sla_gluon.py > /tmp/sla_gluon_rev.py
    python bench/experiments/sla_kernel_rev_ab.py --baseline /tmp/sla_gluon_rev.py [--shape 1,32760,12,128] [--rounds 7]

The copy is imported as a module and swapped in for `kernels.sla.sla_gluon`, so both run through the same launcher
and plan. Prints whether the two give the same bits (and their relative difference), then interleaved medians of
the kernel alone (with the linear branch) and the full op for both (triton do_bench).
"""
import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import triton
from bench_attention import make_inputs

from kernels import sla, sla_gluon


def load_module(path: str):
    spec = importlib.util.spec_from_file_location("sla_gluon_baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", required=True, help="a copy of kernels/sla_gluon.py from another revision")
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    modules = {"this tree": sla_gluon, "baseline": load_module(args.baseline)}
    q, k, v, w, b = make_inputs(*map(int, args.shape.split(",")))
    plan = sla.sla_triton_plan(q, k, v, w, b, 0.1)

    def run(name, full=False):
        sla.sla_gluon = modules[name]
        try:
            p = sla.sla_triton_plan(q, k, v, w, b, 0.1) if full else plan
            return sla.sla_sparse_attention(q, k, v, *p, kernel="gluon")
        finally:
            sla.sla_gluon = sla_gluon

    outs = {name: run(name) for name in modules}
    diff = float((outs["this tree"].float() - outs["baseline"].float()).norm() / outs["baseline"].float().norm())
    print(f"{torch.cuda.get_device_name()}: shape {args.shape}; same bits {torch.equal(*outs.values())}, "
          f"relative difference {diff:.2e}")
    fns = {f"{name} {part}": (lambda name=name, full=(part == 'full op'): run(name, full))
           for part in ("kernel", "full op") for name in modules}
    times = {n: [] for n in fns}
    for _ in range(args.rounds):
        for n, fn in fns.items():
            times[n].append(triton.testing.do_bench(fn, warmup=10, rep=50))
    for n, t in times.items():
        print(f"  {n:20s} {statistics.median(t):.3f} ms  rounds {' '.join(f'{x:.3f}' for x in t)}")


if __name__ == "__main__":
    main()
