"""Where the wall time of a CUDA-graph-replayed 1.3B forward goes: kernels, the gaps between them, steady-state cost.

    python bench/experiments/forward_timeline.py [--replays 3] [--warm 20] [--gaps 12] [--top 25] [--ops 20]

Why: the profiled eager forward sums to less GPU time than the graph replay's wall clock (session 15, H100: ~136
vs ~143 ms). Either the kernels run slower in steady state (the board at its power cap) or the GPU idles between
kernels (launch latency, each kernel's ramp and tail), which programmatic dependent launch or fewer kernels
would recover. This replays the default FP8 + SLA forward `--warm` times (to reach steady-state clocks), then
traces `--replays` replays with the profiler and prints, per replay: wall clock from the first kernel's start to
the last one's end, the sum of kernel durations, the idle time between kernels, the number of kernel boundaries;
then the largest gaps with the kernels on either side, and each kernel's steady-state time and calls per forward.
`--ops N` also profiles one eager forward with input shapes and lists the N torch operators (not our Triton
kernels) with the most GPU time, to say which call launched the library kernels.
"""
import argparse
import collections
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bench_forward import default_model, forward_inputs
from torch.profiler import ProfilerActivity, profile

from turbo_batch.models.cuda_graph import GraphedForward


def kernel_events(trace_path: str) -> list[tuple[float, float, str]]:
    """(start us, end us, name) of every GPU kernel in a chrome trace, in start order."""
    events = json.loads(Path(trace_path).read_text())["traceEvents"]
    out = [(e["ts"], e["ts"] + e["dur"], e["name"]) for e in events if e.get("cat") == "kernel" and "dur" in e]
    return sorted(out)


def split_replays(kernels, n: int):
    """Kernels grouped into the n replays: each replay launches the same number of kernels."""
    per = len(kernels) // n
    return [kernels[i * per:(i + 1) * per] for i in range(n)]


def library_ops(fn, n: int):
    """The n torch operators with the most GPU time in one eager forward, with their input shapes."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn()
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages(group_by_input_shape=True):
        t = getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0)
        if t > 0 and evt.key.startswith("aten::"):
            rows.append((t / 1000.0, evt.count, evt.key, str(evt.input_shapes)[:90]))
    print(f"\ntorch operators by GPU time in one eager forward (ms, calls, op, input shapes), top {n}:")
    for t, count, key, shapes in sorted(rows, reverse=True)[:n]:
        print(f"  {t:>8.2f} {count:>5}  {key:<28} {shapes}")


def short(name: str, width: int = 60) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--replays", type=int, default=3)
    ap.add_argument("--warm", type=int, default=20)
    ap.add_argument("--gaps", type=int, default=12)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--ops", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg, x, ts, ctx = forward_inputs()
    model = default_model(cfg)
    graphs = GraphedForward()
    fn = lambda: graphs(model, x, ts, ctx)  # noqa: E731
    for _ in range(args.warm):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.replays):
            fn()
            torch.cuda.synchronize()
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        prof.export_chrome_trace(f.name)
        kernels = kernel_events(f.name)
    replays = split_replays(kernels, args.replays)
    print(f"{torch.cuda.get_device_name()} | {len(kernels)} kernels traced over {len(replays)} replays")
    print(f"{'replay':>6} {'kernels':>8} {'wall ms':>9} {'sum ms':>8} {'idle ms':>8} {'idle/boundary us':>17}")
    gaps = collections.Counter()
    gap_count = collections.Counter()
    per_kernel = collections.defaultdict(list)
    calls = collections.Counter()
    for i, rep in enumerate(replays):
        wall = (rep[-1][1] - rep[0][0]) / 1e3
        busy = sum(e - s for s, e, _ in rep) / 1e3
        idle, reach = 0.0, rep[0][1]
        for (s0, e0, n0), (s1, e1, n1) in zip(rep, rep[1:]):
            gap = max(0.0, s1 - max(reach, e0))
            idle += gap
            key = (short(n0, 40), short(n1, 40))
            gaps[key] += gap / args.replays
            gap_count[key] += 1
            reach = max(reach, e1)
        totals = collections.Counter()
        for s, e, n in rep:
            totals[n] += (e - s) / 1e3
            calls[n] += 1 / len(replays)
        for n, t in totals.items():
            per_kernel[n].append(t)
        print(f"{i:>6} {len(rep):>8} {wall:>9.2f} {busy:>8.2f} {idle / 1e3:>8.2f} {idle / max(1, len(rep) - 1):>17.2f}")
    print("\nlargest idle time between kernel pairs (us per forward, boundaries per forward):")
    for (a, b), us in gaps.most_common(args.gaps):
        print(f"  {us:>8.1f} {gap_count[(a, b)] // args.replays:>5}  {a}  ->  {b}")
    print(f"\nsteady-state GPU ms and calls per forward by kernel (median over replays), top {args.top}:")
    rows = sorted(((statistics.median(v), n) for n, v in per_kernel.items()), reverse=True)
    for t, n in rows[: args.top]:
        print(f"  {t:>8.2f} {round(calls[n]):>5}  {short(n, 100)}")
    print(f"  {sum(t for t, _ in rows[args.top:]):>8.2f}        (the other {max(0, len(rows) - args.top)} kernels)")
    if args.ops:
        library_ops(lambda: model(x, ts, ctx), args.ops)


if __name__ == "__main__":
    main()
