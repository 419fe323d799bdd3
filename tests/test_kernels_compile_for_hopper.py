"""The Triton kernels compile for sm_90 on a machine without a GPU, in the launch configurations the GPU uses.

Why: the CPU interpreter runs a kernel's arithmetic but not the compiler's checks, so a variant that only Hopper
launches could pass every CPU test and still be refused on the GPU (session 17: a loop-carried bf16 tile that
Triton 3.6, the device's version, promotes to float32). These tests compile those variants ahead of time, as
`bench/experiments/offline_sass.py` does, with whichever Triton is installed.
"""
import pytest

triton = pytest.importorskip("triton")

from bench.experiments.offline_sass import KERNELS, compile_sm90  # noqa: E402


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_the_kernel_compiles_for_sm90(name):
    kernel, consts, opts, pointers = KERNELS[name]
    assert compile_sm90(kernel, consts, opts, pointers).asm["cubin"]
