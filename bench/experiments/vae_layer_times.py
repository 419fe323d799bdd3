"""Where one 480p VAE decode spends its GPU time, decoder layer by decoder layer.

Per layer: CUDA events around every call of each decoder layer (summed over the 21 latent chunks; the events
serialise nothing the decode does not already serialise), with the layer's conv FLOPs and the rate they ran at
(an upsampler's conv counted at the official upsample-then-conv FLOPs, which its sub-pixel form does in 16/36).
Then the middle AttentionBlock's SDPA call per backend, and each Resample's `Upsample(2x nearest) -> Conv2d 3x3` at
one chunk's shape against its sub-pixel form (`Resample._upsample_conv`), both against a float32 reference.

    python bench/experiments/vae_layer_times.py
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from turbo_batch.models import vae as vae_module  # noqa: E402
from turbo_batch.models.vae import Resample, random_vae  # noqa: E402


def layer_times(vae, z) -> None:
    dec = vae.decoder
    layers = [("conv1", dec.conv1), *[(f"middle.{i} {type(m).__name__}", m) for i, m in enumerate(dec.middle)],
              *[(f"up.{i} {type(m).__name__}", m) for i, m in enumerate(dec.upsamples)],
              ("head", dec.head[2])]  # the head's conv (its norm runs inside the conv's call)
    events: dict[str, list] = defaultdict(list)
    flops: dict[str, float] = defaultdict(float)
    hooks = []
    for name, m in layers:  # every conv's FLOPs, from its output's size, charged to the decoder layer holding it
        for conv in m.modules():
            if isinstance(conv, (torch.nn.Conv2d, torch.nn.Conv3d)):
                def count(mod, args, out, name=name):
                    flops[name] += 2 * mod.weight[0].numel() * out.numel()
                hooks.append(conv.register_forward_hook(count))
        if isinstance(m, Resample) and m.mode.startswith("upsample") and vae_module.SUBPIXEL_UPSAMPLE:
            def count_subpixel(mod, args, out, name=name):  # the conv runs as F.conv2d: counted at the official FLOPs
                flops[name] += 2 * mod.resample[1].weight[0].numel() * out.numel()
            hooks.append(m.register_forward_hook(count_subpixel))
    for name, m in layers:
        def pre(mod, args, name=name):
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            events[name].append([e, None])

        def post(mod, args, out, name=name):
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            events[name][-1][1] = e
        hooks += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    vae.decode(z)
    t1.record()
    torch.cuda.synchronize()
    for h in hooks:
        h.remove()
    total = t0.elapsed_time(t1)
    print(f"decode {total:.1f} ms (with per-layer events)")
    print(f"{'layer':32} {'ms':>8} {'share':>6} {'TFLOP':>7} {'TFLOP/s':>8}")
    for name, _ in layers:
        ms = sum(a.elapsed_time(b) for a, b in events[name])
        tflop = flops[name] / 1e12
        print(f"{name:32} {ms:8.1f} {ms / total:6.1%} {tflop:7.2f} {tflop / max(ms, 1e-9) * 1e3:8.0f}")


def upsample_convs(vae) -> None:
    from triton.testing import do_bench

    print("\nResample: nearest 2x + 3x3 conv vs the sub-pixel 2x2 conv on the low-res frames (one chunk)")
    resamples = [(i, m) for i, m in enumerate(vae.decoder.upsamples) if isinstance(m, Resample)]
    chunk_shapes = [(2, 60, 104), (4, 120, 208), (4, 240, 416)]  # the 2d conv's input frames in one 480p chunk
    for (i, m), (frames, h, w) in zip(resamples, chunk_shapes):
        conv = m.resample[1]
        x = torch.randn(frames, conv.in_channels, h, w, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        exact = F.conv2d(F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact"), conv.weight.float(),
                         conv.bias.float(), padding=1)
        err = lambda y: ((y.float() - exact).norm() / exact.norm()).item()  # noqa: E731
        t_ref = do_bench(lambda: m.resample(x), warmup=5, rep=50)
        t_alt = do_bench(lambda: m._upsample_conv(x), warmup=5, rep=50)
        print(f"  up.{i} {m.mode} {conv.in_channels}->{conv.out_channels} {frames}x{h}x{w}: "
              f"upsample+conv {t_ref:.3f} ms "
              f"(err {err(m.resample(x)):.2e}), sub-pixel {t_alt:.3f} ms (err {err(m._upsample_conv(x)):.2e}), "
              f"{t_ref / t_alt:.2f}x")


def attention_backends() -> None:
    """The middle AttentionBlock's SDPA call (one frame: 1 head, 60x104 = 6240 pixels, head dim 384) per backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench

    q, k, v = (torch.randn(1, 1, 6240, 384, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    print("\nAttentionBlock SDPA, one frame [1, 1, 6240, 384] bf16")
    backends_to_try = (("default", None), ("math", [SDPBackend.MATH]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION]),
                       ("cudnn", [SDPBackend.CUDNN_ATTENTION]), ("flash", [SDPBackend.FLASH_ATTENTION]))
    for name, backends in backends_to_try:
        def call():
            if backends is None:
                return F.scaled_dot_product_attention(q, k, v)
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v)
        try:
            err = ((call().float() - ref).norm() / ref.norm()).item()
            print(f"  {name:10} {do_bench(call, warmup=5, rep=50):.3f} ms, err {err:.2e}")
        except RuntimeError as e:
            print(f"  {name:10} unavailable: {str(e).splitlines()[0][:100]}")
    scale = 384 ** -0.5
    manual = lambda: torch.softmax((q[0, 0] @ k[0, 0].T).float() * scale, -1).bfloat16() @ v[0, 0]  # noqa: E731
    err = ((manual().float() - ref[0, 0]).norm() / ref.norm()).item()
    print(f"  {'bmm+softmax':10} {do_bench(manual, warmup=5, rep=50):.3f} ms, err {err:.2e}")


def main() -> None:
    torch.backends.cudnn.benchmark = False
    vae = random_vae(None, seed=0, device="cuda", dtype=torch.bfloat16, on_device=True)
    z = torch.randn(1, 16, 21, 60, 104, device="cuda")
    vae.decode(z)
    layer_times(vae, z)
    attention_backends()
    upsample_convs(vae)


if __name__ == "__main__":
    main()
