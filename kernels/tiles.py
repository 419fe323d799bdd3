"""The grouped output-tile order shared by the persistent GEMMs (kernels/fp8_gemm.py in Triton, kernels/gemm_gluon.py
in Gluon, which calls Triton helpers like this one and compiles them to the same instructions)."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only platforms use the references
    triton = None

if triton is not None:

    @triton.jit
    def grouped_tile(tile_id, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
        """(pid_m, pid_n) of tile_id: GROUP_M row-tiles sweep the columns together so their B tiles stay in L2."""
        in_group = GROUP_M * num_pid_n
        first_m = (tile_id // in_group) * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        return first_m + (tile_id % in_group) % size_m, (tile_id % in_group) // size_m
