"""SM clock and power while the SLA kernel runs alone and inside the 1.3B DiT forward, overlapped and plain.

    python bench/experiments/clocks_under_load.py [--seconds 4]

Why: the Gluon SLA kernel's intra-warpgroup overlap is 12% faster alone on the forward's own inputs
(forward_attention_inputs.py) but gained nothing inside the forward (session 13, H100). If the forward runs at
its power limit, the clock drops when a kernel gets denser, and speed is bought with energy, not with overlap.
nvidia-smi samples clocks, power and throttle reasons every 50 ms in the background; each phase prints its means
and its own throughput (ms per call, from CUDA events over the phase).
"""
import argparse
from datetime import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bench_attention import make_inputs
from bench_forward import default_model, forward_inputs

from kernels import sla, sla_gluon

QUERY = "timestamp,clocks.sm,power.draw,clocks_throttle_reasons.active"


def run_for(fn, seconds: float) -> tuple[float, float, float]:
    """Calls fn back to back for about `seconds`; returns (wall start, wall end, ms per call)."""
    fn()
    torch.cuda.synchronize()
    start, t0 = torch.cuda.Event(enable_timing=True), time.time()
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    n = 0
    while time.time() - t0 < seconds:
        fn()
        n += 1
        if n % 4 == 0:
            torch.cuda.synchronize()
    end.record()
    torch.cuda.synchronize()
    return t0, time.time(), start.elapsed_time(end) / n


def samples_between(lines, t0, t1):
    out = []
    for line in lines:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4:
            continue
        try:
            ts = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()  # local time, as time.time()
            clock, power = float(parts[1].split()[0]), float(parts[2].split()[0])
        except (ValueError, IndexError):
            continue
        if t0 + 0.5 <= ts <= t1:  # skip the ramp
            out.append((clock, power, parts[3]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args()
    log = open("/tmp/clocks_under_load.csv", "w")
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader", "-lms", "50"],
                           stdout=log)
    torch.manual_seed(0)
    cfg, x, ts, ctx = forward_inputs("1.3b", "480p")
    model = default_model(cfg)
    q, k, v, wt, b = make_inputs(1, x.shape[2] * x.shape[3] * x.shape[4] // 4, cfg.num_heads, 128)
    plan = sla.sla_triton_plan(q, k, v, wt, b, 0.1)
    phases = []
    with torch.no_grad():
        for overlap in (True, False):
            sla_gluon.GLUON_ATTENTION["overlap"] = overlap
            name = "overlapped" if overlap else "plain"
            phases.append((f"SLA kernel alone, {name}",
                           *run_for(lambda: sla.sla_sparse_attention(q, k, v, *plan), args.seconds)))
            phases.append((f"DiT forward, {name}", *run_for(lambda: model(x, ts, ctx), args.seconds)))
            time.sleep(1.0)
    sla_gluon.GLUON_ATTENTION["overlap"] = True
    time.sleep(0.2)
    smi.terminate()
    log.close()
    lines = Path("/tmp/clocks_under_load.csv").read_text().splitlines()
    print(torch.cuda.get_device_name())
    for name, t0, t1, ms in phases:
        got = samples_between(lines, t0, t1)
        if not got:
            print(f"{name}: {ms:.3f} ms a call, no samples")
            continue
        reasons = statistics.mode(r for _, _, r in got)
        print(f"{name:32s} {ms:8.3f} ms a call | SM clock {statistics.mean(c for c, _, _ in got):6.0f} MHz "
              f"(min {min(c for c, _, _ in got):.0f}) | power {statistics.mean(p for _, p, _ in got):5.0f} W | "
              f"throttle reasons (mode) {reasons} | {len(got)} samples")


if __name__ == "__main__":
    main()
