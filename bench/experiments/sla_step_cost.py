"""Fixed cost per program against cost per step of the Gluon SLA kernel, from its time at several top-k.

    python bench/experiments/sla_step_cost.py [--shape 1,32760,12,128] [--topks 0.05,0.1,0.2,0.3] [--rounds 3]

A program (one 128-row q-block of one head) pays a fixed cost (launch, the q tile's and the first keys' loads, the
linear branch and the store) plus one cost per 128-key step; top-k moves only the step count. The kernel alone is
timed at each top-k (with and without the linear branch, interleaved rounds), and a least-squares line through
time against steps gives both, as time per wave of programs (one program per SM). Also prints the tensor-core
throughput of the kept blocks (4 L_q * keys * D flops a head).
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import triton
from bench_attention import make_inputs

from kernels import sla


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--topks", default="0.05,0.1,0.2,0.3")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    B, L, H, D = map(int, args.shape.split(","))
    q, k, v, w, b = make_inputs(B, L, H, D)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    units = B * H * -(-L // 128)
    waves = -(-units // sms)
    topks = [float(t) for t in args.topks.split(",")]
    plans = {t: sla.sla_triton_plan(q, k, v, w, b, t) for t in topks}
    fns = {}
    for t, plan in plans.items():
        fns[(t, True)] = lambda plan=plan: sla.sla_sparse_attention(q, k, v, *plan, kernel="gluon")
        fns[(t, False)] = lambda plan=plan: sla.sla_sparse_attention(q, k, v, plan[0], kernel="gluon")
    times = {key: [] for key in fns}
    for _ in range(args.rounds):
        for key, fn in fns.items():
            times[key].append(triton.testing.do_bench(fn, warmup=10, rep=50))
    print(f"{torch.cuda.get_device_name()}: shape {(B, L, H, D)}, {units} programs, {waves} waves on {sms} SMs")
    for linear in (True, False):
        xs, ys = [], []
        for t, plan in plans.items():
            n_keep = plan[0].shape[-1]
            steps = (n_keep + 1) // 2
            ms = statistics.median(times[(t, linear)])
            flops = 4 * B * H * L * n_keep * 64 * D
            xs.append(steps)
            ys.append(ms)
            print(f"  linear={linear!s:5} topk {t:.2f}: {n_keep:3d} blocks, {steps:3d} steps, {ms:.3f} ms, "
                  f"{flops / ms / 1e9:.0f} TFLOP/s on kept blocks")
        n = len(xs)
        mx, my = sum(xs) / n, sum(ys) / n
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        fixed = my - slope * mx
        print(f"  linear={linear}: fixed {fixed * 1e3 / waves:.2f} us per program, {slope * 1e3 / waves:.3f} us per "
              f"step (per wave); at top-k 0.1 the fixed part is {fixed / (fixed + slope * 26):.1%} of the kernel")


if __name__ == "__main__":
    main()
