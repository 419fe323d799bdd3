"""Launch shapes of the fused SLA kernel against the production one, interleaved in one process, on one GPU.

    python bench/experiments/attention_launch_sweep.py [--shape B,L,H,D] [--rounds 5]

Each row is (rows per program, k-blocks per softmax step, warps, stages): 64-row programs of one warpgroup need
about half the registers and shared memory of a 128-row program, so two of them can share an SM and hide each
other's start-up and epilogue (routing stays at 128-token q-blocks: two programs read one kept list). Prints the
compiled registers / shared memory, programs per SM they allow, relative error against the fp32 reference, whether
a second run repeats the bits, and per-round medians (triton do_bench) of the kernel and of the full op
(plan + kernel) with dense SDPA (the faster backend) measured in the same run.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from ab_attention import time_interleaved
from bench_attention import make_inputs
from kernel_resources import recording_launches

from kernels import sla

CONFIGS = {  # name: (rows_per_program, blocks_per_step, num_warps, num_stages)
    "prod 128x2 w8 s2": (128, 2, 8, 2),
    "64x1 w4 s2": (64, 1, 4, 2),
    "64x1 w4 s3": (64, 1, 4, 3),
    "64x2 w4 s2": (64, 2, 4, 2),
    "128x1 w8 s3": (128, 1, 8, 3),
}
REGS_PER_SM, SMEM_PER_SM = 65536, 228 * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--topk", type=float, default=0.1)
    args = ap.parse_args()
    B, L, H, D = map(int, args.shape.split(","))
    q, k, v, w, b = make_inputs(B, L, H, D)
    kept, kvw, ks, b32 = sla.sla_triton_plan(q, k, v, w, b, args.topk)
    ref = sla.sla_reference(q.float(), k.float(), v.float(), w, b, args.topk) if L * H <= 400_000 else None

    def kernel(cfg, plan=(kept, kvw, ks, b32)):
        rows, bps, warps, stages = cfg
        return sla.sla_sparse_attention(q, k, v, *plan, rows_per_program=rows, blocks_per_step=bps,
                                        launch=dict(num_warps=warps, num_stages=stages))

    def full_op(cfg):
        return kernel(cfg, sla.sla_triton_plan(q, k, v, w, b, args.topk))

    live = {}
    for name, cfg in CONFIGS.items():
        try:
            with recording_launches() as compiled:
                out = kernel(cfg)
            torch.cuda.synchronize()
        except Exception as exc:  # noqa: BLE001 - a launch that does not compile is a row, not a crash
            print(f"{name:18s} FAILED {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            continue
        kern = compiled["_sla_attention_kernel"]
        kern._init_handles()
        threads = 32 * cfg[2]
        per_sm = min(REGS_PER_SM // (max(kern.n_regs, 1) * threads), SMEM_PER_SM // max(kern.metadata.shared, 1))
        err = f"{float((out.float() - ref).norm() / ref.norm()):.2e}" if ref is not None else "n/a"
        same = torch.equal(out, kernel(cfg))
        print(f"{name:18s} regs {kern.n_regs} spills {kern.n_spills} smem {kern.metadata.shared // 1024} KB "
              f"-> {per_sm} per SM; rel err {err}; repeats bits {same}", flush=True)
        live[name] = cfg
    del ref
    fns = {}
    for n, cfg in live.items():
        fns[f"{n} kernel"] = lambda cfg=cfg: kernel(cfg)
        fns[f"{n} full op"] = lambda cfg=cfg: full_op(cfg)
    time_interleaved(fns, q, k, v, args.rounds)


if __name__ == "__main__":
    main()
