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
# the norm epilogue, written into a slice of a time-padded buffer as the VAE's residual blocks do
from kernels.conv3d import causal_conv3d_norm_ref
for C, T, ft, bias in [(32, 3, 2, True), (24, 2, 1, False)]:
    x = torch.randn(1, C, T + 2, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(C, C, 3, 3, 3) / (27 * C) ** 0.5
    b = torch.randn(C) if bias else None
    gamma = torch.rand(C, 1, 1, 1) + 0.5
    buf = torch.full((1, C, T + 2, 4, 5), 7.0).contiguous(memory_format=torch.channels_last_3d)
    y = causal_conv3d_triton(x, w, b, launch=(16, 8, ft, 4, 2), out=buf[:, :, 2:], norm_gamma=gamma)
    ref = causal_conv3d_norm_ref(x, w, b, gamma)  # float32 on CPU
    err = ((y.double() - ref).norm() / ref.norm()).item()
    res[f"norm_c{C}_t{T}_ft{ft}"] = [err, y.data_ptr() == buf[:, :, 2:].data_ptr(), bool((buf[:, :, :2] == 7).all())]
    # the residual epilogue: conv + bias + residual
    r = torch.randn(1, C, T, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    y = causal_conv3d_triton(x, w, b, launch=(16, 8, ft, 4, 2), residual=r)
    ref = causal_conv3d_ref(x.double(), w.double(), None if b is None else b.double()) + r.double()
    res[f"residual_c{C}_t{T}_ft{ft}"] = [((y.double() - ref).norm() / ref.norm()).item()]
print("RESULT" + json.dumps(res))
"""


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


def test_the_kernel_in_interpreter_mode_is_the_conv_to_float32_rounding(interpreted):
    convs = {k: v for k, v in interpreted.items() if k.startswith("c")}
    assert len(convs) == 4
    for case, (err, same_shape, channels_last) in convs.items():
        assert err < 1e-6 and same_shape and channels_last, case


def test_its_norm_epilogue_writes_the_norm_and_silu_of_its_output_into_the_buffer_it_is_given(interpreted):
    """The conv, its bias, the VAE's RMS norm and SiLU (`causal_conv3d_norm_ref`, float32) to float32 rounding,
    written into the slice it was handed (a time-padded buffer after its two padding frames, which stay untouched)."""
    normed = {k: v for k, v in interpreted.items() if k.startswith("norm")}
    assert len(normed) == 2
    for case, (err, wrote_in_place, padding_untouched) in normed.items():
        assert err < 1e-5 and wrote_in_place and padding_untouched, case


def test_its_residual_epilogue_adds_the_residual_after_the_bias(interpreted):
    added = {k: v for k, v in interpreted.items() if k.startswith("residual")}
    assert len(added) == 2
    for case, (err,) in added.items():
        assert err < 1e-6, case


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


def gpu_conv_inputs(seed: int, channels: int = 96, size: tuple = (60, 104)):
    """bf16 channels-last x (6 padded frames), weight, bias and the generator: the decoder's full-resolution width,
    a small frame."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(1, channels, 6, *size, device="cuda", generator=g).bfloat16().contiguous(
        memory_format=torch.channels_last_3d)
    w = (torch.randn(channels, channels, 3, 3, 3, device="cuda", generator=g) / (27 * channels) ** 0.5).bfloat16()
    b = torch.randn(channels, device="cuda", generator=g).bfloat16()
    return x, w, b, g


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_it_is_as_accurate_as_cudnn_in_bf16_and_repeats_its_bits(monkeypatch):
    from kernels.conv3d import causal_conv3d_triton

    x, w, b, _ = gpu_conv_inputs(0)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the float32 reference in float32
    exact = F.conv3d(x.float(), w.float(), b.float(), padding=(0, 1, 1))
    cudnn = F.conv3d(x, w, b, padding=(0, 1, 1))
    ours = causal_conv3d_triton(x, w, b)

    def err(y):
        return ((y.float() - exact).norm() / exact.norm()).item()

    assert err(ours) <= 1.1 * err(cudnn) + 1e-4
    assert torch.equal(ours, causal_conv3d_triton(x, w, b))
    assert ours.is_contiguous(memory_format=torch.channels_last_3d)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_its_norm_epilogue_is_as_accurate_as_cudnn_then_the_norm_pass_and_repeats_its_bits(monkeypatch):
    from kernels.conv3d import causal_conv3d_norm_ref, causal_conv3d_triton
    from kernels.vae_elementwise import rms_norm_silu

    x, w, b, g = gpu_conv_inputs(1)
    gamma = (torch.rand(96, 1, 1, 1, device="cuda", generator=g) + 0.5).bfloat16()
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    exact = causal_conv3d_norm_ref(x.float(), w.float(), b.float(), gamma.float())
    separate = rms_norm_silu(F.conv3d(x, w, None, padding=(0, 1, 1)), gamma, True, bias=b)  # what the VAE runs
    buf = torch.empty_like(x)
    fused = causal_conv3d_triton(x, w, b, out=buf[:, :, 2:], norm_gamma=gamma)

    def err(y):
        return ((y.float() - exact).norm() / exact.norm()).item()

    assert err(fused) <= 1.1 * err(separate) + 1e-4
    again = torch.empty_like(buf)
    assert torch.equal(fused, causal_conv3d_triton(x, w, b, out=again[:, :, 2:], norm_gamma=gamma))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_the_gpu_its_residual_epilogue_gives_the_bits_of_the_separate_bias_and_residual_pass():
    from kernels.conv3d import causal_conv3d_triton
    from kernels.vae_elementwise import bias_residual_add_

    x, w, b, g = gpu_conv_inputs(2)
    r = torch.randn(1, 96, 4, 60, 104, device="cuda", generator=g).bfloat16().contiguous(
        memory_format=torch.channels_last_3d)
    separate = bias_residual_add_(causal_conv3d_triton(x, w), b, r)
    assert torch.equal(causal_conv3d_triton(x, w, b, residual=r), separate)
