"""Launch sweep of the SLA statistics pass (sla_prologue) at the 1.3B 480p (or 14B 720p) shape: time, registers, agreement.

    python bench/experiments/stats_launch_sweep.py [--14b] [--configs "16,132,64,3;16,132,128,2"]

Each row sets kernels.sla.STATS_LAUNCH, then times sla_prologue (statistics + finalize, triton do_bench median)
and compares its kvw with the default launch's (another chunking only changes the fp32 summation order).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from triton.testing import do_bench

from kernel_resources import recording_launches

from kernels import sla

CONFIGS = [  # (num_warps, target_programs, tile, num_stages)
    (8, 264, 64, 2), (16, 132, 64, 3), (16, 132, 64, 4), (16, 264, 64, 3), (16, 132, 32, 4), (16, 132, 32, 6),
    (8, 132, 32, 4), (8, 264, 32, 4), (16, 66, 64, 3), (16, 132, 128, 3),
]


def main():
    shape = (1, 75600, 40, 128) if "--14b" in sys.argv else (1, 32760, 12, 128)
    print(f"shape {shape}")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(*shape, generator=g, device="cuda").bfloat16() for _ in range(3))
    w = torch.randn(128, 128, generator=g, device="cuda") / 11.3
    configs = CONFIGS
    if "--configs" in sys.argv:  # warps,programs,tile,stages;...
        configs = [tuple(map(int, c.split(","))) for c in sys.argv[sys.argv.index("--configs") + 1].split(";")]
    default = dict(sla.STATS_LAUNCH)
    ref = sla.sla_prologue(q, k, v, w)[2].float()
    for warps, target, tile, stages in configs:
        sla.STATS_LAUNCH.update(num_warps=warps, target_programs=target, tile=tile, num_stages=stages)
        try:
            with recording_launches() as compiled:
                kvw = sla.sla_prologue(q, k, v, w)[2].float()
            kern = compiled["_sla_stats_kernel"]
            kern._init_handles()
            ms = do_bench(lambda: sla.sla_prologue(q, k, v, w), warmup=20, rep=100, return_mode="median")
            diff = ((kvw - ref).norm() / ref.norm()).item()
            print(f"warps {warps:2d} programs {target:3d} tile {tile:3d} stages {stages}: {ms:.3f} ms  regs "
                  f"{kern.n_regs} spills {kern.n_spills} smem {kern.metadata.shared // 1024} KB  kvw rel diff {diff:.1e}",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - a config that does not compile is a row, not a crash
            print(f"warps {warps} programs {target} tile {tile} stages {stages}: FAILED {type(exc).__name__}: "
                  f"{str(exc)[:100]}", flush=True)
    sla.STATS_LAUNCH.update(default)


if __name__ == "__main__":
    main()
