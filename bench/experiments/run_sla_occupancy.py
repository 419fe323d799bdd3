"""Plan breakdown and an occupancy sweep (k-blocks per step x stages x maxnreg) of the production SLA kernel.

H100 80GB HBM3 at 1x32760x12x128, top-k 0.1 (ms): kernel 1.553, prologue (statistics + finalize) 0.214, scores
0.019, top-k select 0.042, plan 0.287. Register caps meant to fit two CTAs per SM only slowed it (one block per step,
3 stages, maxnreg 128: 1.794; pairs with maxnreg 128: 3.0-6.6); the default (pairs, 2 stages) stayed fastest.

    python bench/experiments/run_sla_occupancy.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_sla_variants import inputs, rel
from triton.testing import do_bench

from kernels import sla

ms = lambda fn: float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
q, k, v, w, bias = inputs(1, 32760, 12, 128)
topk = 0.1
kept, kvw, ksum, b = sla.sla_triton_plan(q, k, v, w, bias, topk)
prod = sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, b)
print(f"production {ms(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, b)):.3f}")
print(f"prologue   {ms(lambda: sla.sla_prologue(q, k, v, w)):.3f}")
qp, kp, _, _ = sla.sla_prologue(q, k, v, w)
print(f"scores     {ms(lambda: qp @ kp.transpose(-1, -2)):.3f}")
sc = qp @ kp.transpose(-1, -2)
print(f"select     {ms(lambda: sla.sla_select_blocks(sc, 51)):.3f}")
print(f"plan       {ms(lambda: sla.sla_triton_plan(q, k, v, w, bias, topk)):.3f}")
for bps in (1, 2):
    for st in (1, 2, 3):
        for nreg in (None, 128, 168):
            launch = {"num_warps": 8, "num_stages": st}
            if nreg:
                launch["maxnreg"] = nreg
            try:
                f = lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, b, blocks_per_step=bps, gather=False, launch=launch)
                out = f()
                print(f"bps {bps} stages {st} maxnreg {nreg}: err {rel(out, prod):.1e} {ms(f):.3f} ms", flush=True)
            except Exception as exc:
                print(f"bps {bps} stages {st} maxnreg {nreg}: FAILED {type(exc).__name__} {str(exc)[:120]}", flush=True)
