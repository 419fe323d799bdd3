"""Registers, spills and shared memory of every SLA Triton kernel at the 1.3B 480p shape, as compiled on this GPU.

    python bench/experiments/kernel_resources.py

Occupancy explains timings the source does not: e.g. a kernel over 128 registers per thread at 8 warps fits one
program per SM, not two.
"""
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
from triton.runtime import jit

from kernels import sla


@contextlib.contextmanager
def recording_launches():
    """Within the block, every Triton launch records its compiled kernel under the kernel's name (the last launch
    of each name wins), so its registers and spills can be read afterwards."""
    compiled, run = {}, jit.JITFunction.run

    def recording(self, *args, **kwargs):
        kernel = run(self, *args, **kwargs)
        compiled[self.fn.__name__] = kernel
        return kernel

    jit.JITFunction.run = recording
    try:
        yield compiled
    finally:
        jit.JITFunction.run = run


def main():
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 32760, 12, 128, generator=g, device="cuda").bfloat16() for _ in range(3))
    w, b = torch.randn(128, 128, device="cuda") / 11.3, torch.zeros(128, device="cuda")
    with recording_launches() as compiled:
        sla.sla_triton(q, k, v, w, b, 0.1)
    torch.cuda.synchronize()
    print(f"{'kernel':28s} {'regs':>5s} {'spills':>6s} {'smem KB':>8s} {'warps':>5s}")
    for name, kernel in compiled.items():
        kernel._init_handles()
        md = kernel.metadata
        print(f"{name:28s} {kernel.n_regs:5d} {kernel.n_spills:6d} {md.shared / 1024:8.1f} {md.num_warps:5d}")


if __name__ == "__main__":
    main()
