"""Specification of the VAE's implicit-GEMM causal conv (kernels/conv3d.py).

It is the conv `vae.CausalConv3d` runs on its time-padded buffer (3x3x3, spatial zero padding 1): in the interpreter
(float32, where the kernel's MMAs are exact float32 products) it matches a float64 conv to float32 rounding for odd and
even frame counts, output widths that are not powers of two, with and without a bias, one or two output frames a
program; on the GPU, in bf16, it is as close to the float32 conv as cuDNN's bf16 conv is, and repeats its bits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _helpers import run_interpreted

from kernels.conv3d import pack_weight, supported

INTERPRET_SCRIPT = r"""
import json, torch
from kernels.conv3d import causal_conv3d_ref, causal_conv3d_triton
torch.manual_seed(0)
res = {}
for C, c_out, T, H, W, ft, bias in [(32, 24, 3, 5, 7, 2, True), (32, 32, 4, 4, 6, 1, False),
                                    (64, 96, 2, 3, 9, 2, True), (16, 16, 1, 2, 3, 2, False)]:
    x = torch.randn(2, C, T + 2, H, W).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(c_out, C, 3, 3, 3) / (27 * C) ** 0.5
    b = torch.randn(c_out) if bias else None
    y = causal_conv3d_triton(x, w, b, launch=(16, 16, ft, 4, 2))
    ref = causal_conv3d_ref(x.double(), w.double(), None if b is None else b.double())
    err = ((y.double() - ref).norm() / ref.norm()).item()
    res[f"c{C}_{c_out}_t{T}_ft{ft}"] = [err, list(y.shape) == list(ref.shape),
                                       y.is_contiguous(memory_format=torch.channels_last_3d)]
print("RESULT" + json.dumps(res))
"""


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


def test_the_kernel_in_interpreter_mode_is_the_conv_to_float32_rounding(interpreted):
    assert len(interpreted) == 4
    for case, (err, same_shape, channels_last) in interpreted.items():
        assert err < 1e-6 and same_shape and channels_last, case


def test_the_packed_weight_holds_every_tap_as_rows_of_output_channels_padded_to_a_power_of_two():
    w = torch.randn(24, 8, 3, 3, 3)
    packed = pack_weight(w)
    assert packed.shape == (27 * 8, 32)
    kt, kh, kw, c = 2, 0, 1, 5
    assert torch.equal(packed[((kt * 3 + kh) * 3 + kw) * 8 + c, :24], w[:, c, kt, kh, kw])
    assert not packed[:, 24:].any()


def test_layouts_and_kernels_it_cannot_take_are_reported_unsupported():
    w = torch.randn(96, 96, 3, 3, 3)
    x = torch.randn(1, 96, 3, 4, 4, dtype=torch.bfloat16)
    assert not supported(x, w)  # NCDHW
    assert supported(x.contiguous(memory_format=torch.channels_last_3d), w)
    assert not supported(x.contiguous(memory_format=torch.channels_last_3d), torch.randn(96, 96, 1, 1, 1))
    assert not supported(x.contiguous(memory_format=torch.channels_last_3d), torch.randn(3, 96, 3, 3, 3))  # the head
    assert not supported(torch.randn(1, 192, 3, 4, 4).contiguous(memory_format=torch.channels_last_3d),
                         torch.randn(192, 192, 3, 3, 3))  # cuDNN's own convs are the faster ones there


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_it_is_as_accurate_as_cudnn_in_bf16_and_repeats_its_bits(monkeypatch):
    from kernels.conv3d import causal_conv3d_triton

    channels, size = 96, (60, 104)  # the decoder's full-resolution width, a small frame
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(1, channels, 6, *size, device="cuda", generator=g).bfloat16().contiguous(
        memory_format=torch.channels_last_3d)
    w = (torch.randn(channels, channels, 3, 3, 3, device="cuda", generator=g) / (27 * channels) ** 0.5).bfloat16()
    b = torch.randn(channels, device="cuda", generator=g).bfloat16()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the float32 reference in float32
    exact = F.conv3d(x.float(), w.float(), b.float(), padding=(0, 1, 1))
    cudnn = F.conv3d(x, w, b, padding=(0, 1, 1))
    ours = causal_conv3d_triton(x, w, b)

    def err(y):
        return ((y.float() - exact).norm() / exact.norm()).item()

    assert err(ours) <= 1.1 * err(cudnn) + 1e-4
    assert torch.equal(ours, causal_conv3d_triton(x, w, b))
    assert ours.is_contiguous(memory_format=torch.channels_last_3d)
