"""Registers, spills and shared memory of every SLA Triton kernel at the 1.3B 480p shape, as compiled on this GPU.

    python bench/experiments/kernel_resources.py

Occupancy explains timings the source does not: e.g. a kernel over 128 registers per thread at 8 warps fits one
program per SM, not two.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from triton.runtime import jit

from kernels import sla

compiled = {}
_run = jit.JITFunction.run


def _recording_run(self, *args, **kwargs):
    kernel = _run(self, *args, **kwargs)
    compiled[self.fn.__name__] = kernel
    return kernel


def main():
    jit.JITFunction.run = _recording_run
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 12, 128, generator=g, device="cuda").bfloat16() for _ in range(3))
    w, b = torch.randn(128, 128, device="cuda") / 11.3, torch.zeros(128, device="cuda")
    sla.sla_triton(q, k, v, w, b, 0.1)
    torch.cuda.synchronize()
    jit.JITFunction.run = _run
    print(f"{'kernel':28s} {'regs':>5s} {'spills':>6s} {'smem KB':>8s} {'warps':>5s}")
    for name, kernel in compiled.items():
        kernel._init_handles()
        md = kernel.metadata
        print(f"{name:28s} {kernel.n_regs:5d} {kernel.n_spills:6d} {md.shared / 1024:8.1f} {md.num_warps:5d}")


if __name__ == "__main__":
    main()
