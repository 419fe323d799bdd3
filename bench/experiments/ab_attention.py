"""A/B of the fused SLA kernel across saved copies of kernels/sla.py, interleaved in one process.

    python bench/experiments/ab_attention.py BASE_SLA_PY [VARIANT_SLA_PY ...] [--rounds 6] [--shape B,L,H,D]

With one file, the variants are that file (old) and the working tree's kernels/sla.py (new). Prints each variant's
compiled registers / spills and whether it repeats the first file's bits, then per-round medians (triton
do_bench) of the fused kernel and the full op, and dense SDPA (the faster backend) in the same run, so the
full op's speedup is read off one process. Save the old file first, e.g.
`git show HEAD:kernels/sla.py > .snap/old_sla.py` (.snap/ is git-ignored; name it in the device tool's carry).
"""
import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from bench_attention import dense_rows, make_inputs
from kernel_resources import recording_launches
from triton.testing import do_bench

from kernels import sla


def load(path):
    spec = importlib.util.spec_from_file_location(f"sla_{Path(path).stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def time_interleaved(fns: dict, q, k, v, rounds: int):
    """Per-round medians (triton do_bench) of every fn in turn, dense SDPA (the faster backend) every other round;
    prints the rounds, then each fn's median and, for full ops, its speedup over dense in this same run."""
    times = {n: [] for n in fns}
    dense = []
    for r in range(rounds):
        for n, fn in fns.items():
            times[n].append(do_bench(fn, warmup=10, rep=60, return_mode="median"))
        if r % 2 == 0:
            dense.append(min(ms for ms, _ in dense_rows(q, k, v).values() if ms is not None))
        print(f"round {r}: " + "  ".join(f"{n} {t[-1]:.3f}" for n, t in times.items()), flush=True)
    sdpa = statistics.median(dense)
    print(f"dense SDPA (faster backend) median {sdpa:.3f} ms over {len(dense)} runs")
    width = max(len(n) for n in times)
    for n, t in times.items():
        med = statistics.median(t)
        print(f"median {n:{width}s} {med:8.3f} ms" + (f"  {sdpa / med:5.2f}x dense" if "full op" in n else ""))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--shape", default="1,32760,12,128")
    args = ap.parse_args()
    stems = [Path(p).stem for p in args.files]
    if len(set(stems)) != len(stems):
        ap.error(f"kernel files need distinct names (they label the rows): {stems}")
    mods = {stem: load(p) for stem, p in zip(stems, args.files)}
    if len(mods) == 1:
        mods = {"old": next(iter(mods.values())), "new": sla}
    B, L, H, D = map(int, args.shape.split(","))
    q, k, v, w, b = make_inputs(B, L, H, D)  # the same inputs bench_attention.py times
    kept, kvw, ks, b32 = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    fns = {}
    for name, mod in mods.items():
        fns[f"{name} kernel"] = lambda m=mod: m.sla_sparse_attention(q, k, v, kept, kvw, ks, b32)
        fns[f"{name} full op"] = lambda m=mod: m.sla_triton(q, k, v, w, b, 0.1)
    first = next(iter(mods))
    ref = fns[f"{first} kernel"]()
    for name in mods:
        with recording_launches() as compiled:
            out = fns[f"{name} kernel"]()
        torch.cuda.synchronize()
        kernel = compiled["_sla_attention_kernel"]
        kernel._init_handles()
        print(f"{name:12s} regs {kernel.n_regs} spills {kernel.n_spills} smem {kernel.metadata.shared / 1024:.0f} KB; "
              f"bitwise equal to {first}: {torch.equal(out, ref)}, max diff {(out.float() - ref.float()).abs().max():.2e}")
    time_interleaved(fns, q, k, v, args.rounds)


if __name__ == "__main__":
    main()
