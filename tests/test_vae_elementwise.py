"""Specification of the VAE's fused elementwise passes (kernels/vae_elementwise.py): the RMS norm (+ a conv's bias,
+ SiLU) and the bias + residual add.

The torch references are the model's own arithmetic (`vae.RMS_norm`, PyTorch's separate conv bias add, the residual
add); the Triton kernels must give their bits in the interpreter (the norm's reduction order is the only freedom,
and these shapes do not expose it), stay within two bf16 roundings of them on the GPU (the residual add: the same
bits), write into a slice of a channels-last time-padded buffer, repeat their bits, and leave layouts they cannot
read as rows to the references."""
from __future__ import annotations

import pytest
import torch
from _helpers import run_interpreted

from kernels.vae_elementwise import bias_residual_add_, bias_residual_add_ref, rms_norm_silu, rms_norm_silu_ref

INTERPRET_SCRIPT = r"""
import json, torch
from kernels.vae_elementwise import (bias_residual_add_ref, bias_residual_add_triton, rms_norm_silu_ref,
                                     rms_norm_silu_triton)
torch.manual_seed(0)
res = {}
cl = dict(memory_format=torch.channels_last_3d)
for C, shape in [(96, (1, 96, 3, 10, 14)), (192, (1, 192, 2, 5, 7)), (384, (1, 384, 1, 4, 6))]:
    x = (torch.randn(*shape) * 3).to(torch.bfloat16).contiguous(**cl)
    g, bias = torch.randn(C, 1, 1, 1), torch.randn(C).bfloat16()
    for silu in (False, True):
        res[f"c{C}_silu{silu}"] = torch.equal(rms_norm_silu_triton(x, g, silu), rms_norm_silu_ref(x, g, silu))
    res[f"c{C}_bias"] = torch.equal(rms_norm_silu_triton(x, g, True, bias=bias), rms_norm_silu_ref(x, g, True, bias=bias))
    for dtype in (torch.bfloat16, torch.float32):
        y, r = (torch.randn(*shape).to(dtype).contiguous(**cl) for _ in range(2))
        got, want = bias_residual_add_triton(y.clone(), bias.to(dtype), r), bias_residual_add_ref(y.clone(), bias.to(dtype), r)
        res[f"c{C}_residual_{dtype}"] = torch.equal(got, want) and got.is_contiguous(**cl)
    res[f"c{C}_residual_nobias"] = torch.equal(bias_residual_add_triton(y.clone(), None, r), y + r)
    buf = torch.full((1, C, shape[2] + 2, *shape[3:]), 7.0, dtype=torch.bfloat16)
    buf = buf.contiguous(memory_format=torch.channels_last_3d)
    rms_norm_silu_triton(x, g, True, out=buf[:, :, 2:])
    res[f"c{C}_slice"] = torch.equal(buf[:, :, 2:], rms_norm_silu_ref(x, g, True)) and bool((buf[:, :, :2] == 7).all())
    for silu, bias_or_none in ((True, bias), (False, None)):  # the segmented kernel (vae_elementwise.SEGMENTED_NORM)
        seg = rms_norm_silu_triton(x, g, silu, bias=bias_or_none, segments=True)
        res[f"c{C}_segments_silu{silu}"] = torch.equal(seg, rms_norm_silu_ref(x, g, silu, bias=bias_or_none))
frames = (torch.randn(4, 96, 6, 9) * 2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
g2 = torch.rand(96, 1, 1)
res["image"] = torch.equal(rms_norm_silu_triton(frames, g2, True), rms_norm_silu_ref(frames, g2, True))
print("RESULT" + json.dumps(res))
"""


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


def test_the_kernels_in_interpreter_mode_give_the_references_bits_for_every_vae_width(interpreted):
    assert {k: v for k, v in interpreted.items() if not v} == {}
    assert len(interpreted) == 28


def test_an_ncdhw_tensor_goes_through_the_references():
    x = torch.randn(1, 96, 2, 4, 5, dtype=torch.bfloat16)
    g, b = torch.rand(96, 1, 1, 1), torch.randn(96, dtype=torch.bfloat16)
    assert torch.equal(rms_norm_silu(x, g, True, bias=b), rms_norm_silu_ref(x, g, True, bias=b))
    r = torch.randn_like(x)
    assert torch.equal(bias_residual_add_(x.clone(), b, r), bias_residual_add_ref(x.clone(), b, r))


def test_the_bias_residual_reference_rounds_as_a_conv_with_bias_then_a_residual_add_would():
    y, r, b = torch.randn(1, 8, 2, 3, 3).bfloat16(), torch.randn(1, 8, 2, 3, 3).bfloat16(), torch.randn(8).bfloat16()
    assert torch.equal(bias_residual_add_ref(y.clone(), b, r), (y + b.view(8, 1, 1, 1)) + r)


def test_the_reference_is_the_official_rms_norm_and_silu():
    """Wan's RMS_norm: F.normalize over channels * sqrt(C) * gamma (in fp32 here, so it is exact to ~1e-7)."""
    x = torch.randn(2, 32, 3, 4, 4)
    g = torch.rand(32, 1, 1, 1)
    official = torch.nn.functional.normalize(x, dim=1) * 32 ** 0.5 * g
    assert torch.allclose(rms_norm_silu_ref(x, g), official, atol=1e-5)
    assert torch.allclose(rms_norm_silu_ref(x, g, True), torch.nn.functional.silu(official), atol=1e-5)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("C,hw", [(96, (480, 832)), (192, (240, 416)), (384, (60, 104))])
@pytest.mark.parametrize("segmented", [False, True])
def test_on_the_gpu_the_kernel_is_within_two_roundings_of_the_reference_and_repeats_its_bits(C, hw, segmented,
                                                                                             monkeypatch):
    """A decode chunk's real shapes (4 frames into a buffer with 2 frames of time padding); fresh random inputs.
    The norm's fp32 sum runs in another order, so a value can land one bf16 step away before gamma and, rounded
    again after it, two steps away (measured on an H100: 5e-6 of the values, at most 1.4% relative); the SiLU is
    then applied to those values as torch applies it (the same bits there)."""
    from kernels import vae_elementwise

    monkeypatch.setattr(vae_elementwise, "SEGMENTED_NORM", segmented)
    g = torch.Generator(device="cuda").manual_seed(C)
    x = (torch.randn(1, C, 4, *hw, device="cuda", generator=g) * 3).bfloat16()
    x = x.contiguous(memory_format=torch.channels_last_3d)
    gamma = torch.rand(C, 1, 1, 1, device="cuda", generator=g) + 0.5
    buf = torch.empty(1, C, 6, *hw, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last_3d)
    out = rms_norm_silu(x, gamma, True, out=buf[:, :, 2:])
    normed, ref = rms_norm_silu(x, gamma), rms_norm_silu_ref(x, gamma)

    ulp = torch.ldexp(torch.ones_like(ref, dtype=torch.float32), torch.frexp(ref.float()).exponent - 8)  # bf16 step
    steps = (normed.float() - ref.float()).abs() / ulp
    assert steps.max() <= 2 and (normed != ref).float().mean() < 1e-4
    assert torch.equal(out, torch.nn.functional.silu(normed))
    assert torch.equal(out, rms_norm_silu(x, gamma, True))
    bias = torch.randn(C, device="cuda", generator=g).bfloat16()
    assert torch.equal(rms_norm_silu(x, gamma, bias=bias), rms_norm_silu(x + bias.view(C, 1, 1, 1), gamma))


@pytest.mark.gpu
@cuda
def test_on_the_gpu_the_bias_residual_kernel_gives_the_references_bits():
    g = torch.Generator(device="cuda").manual_seed(1)
    y, r = (torch.randn(1, 96, 4, 480, 832, device="cuda", generator=g).bfloat16()
            .contiguous(memory_format=torch.channels_last_3d) for _ in range(2))
    bias = torch.randn(96, device="cuda", generator=g).bfloat16()
    assert torch.equal(bias_residual_add_(y.clone(), bias, r), bias_residual_add_ref(y.clone(), bias, r))
