"""Ray scaling run: the same manifest rendered by 1 actor (1 GPU) and by one actor per GPU; throughput and hashes.

Real-size preset with deterministic random weights; writes a manifest of `--rows` product-clip rows, renders it
twice into fresh output folders through the real driver (local Ray), and reports videos/minute (wall clock of the
whole run, and steady state between the first and last finished row), the scaling ratio, and whether every row's
frame hash is identical between the runs.

    python bench/bench_scaling.py --rows 16 --model wan2.1-t2v-1.3b
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from turbo_batch.config import load_config  # noqa: E402
from turbo_batch.demo import PROMPTS  # noqa: E402
from turbo_batch.driver import connect_ray, render  # noqa: E402
from turbo_batch.store import Store  # noqa: E402


def steady_state_vpm(records: dict, actors: int) -> float:
    """Videos/minute after each actor's first row (which carries Ray start-up and model loading)."""
    ends = sorted(r["finished_at"] for r in records.values() if r.get("status") == "ok")
    if len(ends) <= actors:
        return 0.0
    return (len(ends) - actors) / ((ends[-1] - ends[actors - 1]) / 60.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--model", default="wan2.1-t2v-1.3b")
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", default="/tmp/turbo-scaling")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    manifest = os.path.join(args.work, "manifest.parquet")
    pq.write_table(pa.table({
        "id": [f"clip-{i:03d}" for i in range(args.rows)],
        "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(args.rows)],
        "seed": pa.array([1000 + i for i in range(args.rows)], pa.int64()),
        "model": [args.model] * args.rows,
        "sku": [f"SKU-{i}" for i in range(args.rows)],
    }), manifest)
    connect_ray()
    results = {}
    for n in args.gpus:
        out = os.path.join(args.work, f"out-{n}gpu")
        cfg = load_config(["runtime.random_weights=0", f"render.actors={n}", *args.overrides])
        t0 = time.time()
        res = render(manifest, out, cfg, live=False)
        wall = time.time() - t0
        index = Store(out).read_index().to_pylist()
        results[n] = {"wall_s": wall, "ok": res.summary["ok"], "vpm_wall": res.summary["videos_per_minute"],
                      "vpm_steady": steady_state_vpm(res.records, n), "hashes": {r["id"]: r["frames_sha256"] for r in index},
                      "gpus_used": sorted({r["gpu"] for r in index}), "runtime": res.summary["runtime"]}
        print(f"{n} GPU(s): {res.summary['ok']}/{args.rows} ok in {wall:.1f} s; {results[n]['vpm_wall']:.1f} videos/min "
              f"(wall), {results[n]['vpm_steady']:.1f} videos/min (steady state); GPUs used {results[n]['gpus_used']}",
              flush=True)
    base = args.gpus[0]
    print(f"\n{'GPUs':>5}{'ok':>5}{'wall s':>9}{'vid/min wall':>14}{'vid/min steady':>16}{'scaling (steady)':>18}")
    for n, r in results.items():
        print(f"{n:>5}{r['ok']:>5}{r['wall_s']:>9.1f}{r['vpm_wall']:>14.1f}{r['vpm_steady']:>16.1f}"
              f"{r['vpm_steady'] / results[base]['vpm_steady']:>17.2f}x")
    same = all(results[n]["hashes"] == results[base]["hashes"] for n in results)
    print(f"identical frame hashes across GPU counts: {same} ({len(results[base]['hashes'])} rows)")
    print(f"runtime: {results[base]['runtime']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): {kk: vv for kk, vv in v.items()} for k, v in results.items()}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
