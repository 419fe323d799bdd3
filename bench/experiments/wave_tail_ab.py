"""The fused SLA kernel's wave tail: what a partial last wave costs, and the tail split on / off.

    python bench/experiments/wave_tail_ab.py [--shape 1,32760,12,128] [--rounds 7]   # split on/off, interleaved
    python bench/experiments/wave_tail_ab.py --probe     # kernel ms vs number of q-blocks at 52 kept blocks

The A/B prints the split plan, the profiler's GPU time of each of the split's three launches (whole units, tail
pieces, merge), then interleaved medians of the kernel and the full op with the split (the Hopper default) and
without (`wave_slots=0`), and dense SDPA in the same run.
"""
import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from ab_attention import time_interleaved
from bench_attention import make_inputs
from triton.testing import do_bench

from kernels import sla


def probe(heads: int = 12, n_keep: int = 52, rounds: int = 5):
    """Kernel time across q-block counts around a wave boundary: a step at each multiple of the SM count."""
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    cases = {}
    for nq in (242, 247, 250, 253, 254, 256, 259, 264):
        L, D = nq * 128, 128
        q, k, v = (torch.randn(1, L, heads, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        scores = torch.rand(1, heads, nq, L // 64, device="cuda")
        kept = scores.argsort(-1)[..., :n_keep].sort(-1).values.to(torch.int32).contiguous()
        kvw = (torch.randn(1, heads, D, D, device="cuda") / D).to(torch.bfloat16)
        cases[nq] = (q, k, v, kept, kvw, torch.rand(1, heads, D, device="cuda"), torch.zeros(D, device="cuda"))
    times = {nq: [] for nq in cases}
    for _ in range(rounds):
        for nq, args in cases.items():
            times[nq].append(do_bench(lambda a=args: sla.sla_sparse_attention(*a, wave_slots=0), warmup=10, rep=60,
                                      return_mode="median"))
    for nq, t in times.items():
        progs = heads * nq
        print(f"q-blocks {nq}: {progs} programs = {progs / sms:6.2f} waves of {sms}: {statistics.median(t):.4f} ms")


def ab(shape, rounds: int):
    q, k, v, w, b = make_inputs(*shape)
    kept, kvw, ks, b32 = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    slots = sla.TAIL_SPLIT["wave_slots"]
    plan = sla._tail_split(shape[2] * math.ceil(shape[1] / 128), kept.shape[-1], slots)
    print("split (tail units, pieces, chunk):", plan)

    def full(wave_slots):
        sla.TAIL_SPLIT["wave_slots"] = wave_slots
        try:
            return sla.sla_triton(q, k, v, w, b, 0.1)
        finally:
            sla.TAIL_SPLIT["wave_slots"] = slots

    fns = {"split kernel": lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ks, b32),
           "whole kernel": lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ks, b32, wave_slots=0),
           "split full op": lambda: full(slots), "whole full op": lambda: full(0)}
    diff = (fns["split kernel"]().float() - fns["whole kernel"]().float()).abs().max().item()
    print(f"split vs whole: max abs diff {diff:.2e}")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            fns["split kernel"]()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    per_launch = {}
    for i, e in enumerate(events):
        per_launch.setdefault(f"launch {i % 3} {e.name}", []).append((e.time_range.end - e.time_range.start) / 1e3)
    for name, t in per_launch.items():
        print(f"  {name}: {statistics.median(t):.4f} ms")
    time_interleaved(fns, q, k, v, rounds)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--probe", action="store_true")
    args = ap.parse_args()
    if args.probe:
        probe()
    else:
        ab(tuple(map(int, args.shape.split(","))), args.rounds)


if __name__ == "__main__":
    main()
