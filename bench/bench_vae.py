"""Wan2.1 VAE decode benchmark on one GPU: turbo_batch's WanVAE vs diffusers' AutoencoderKLWan, same weights.

Real-size VAE (base_dim 96), random bf16 weights (speed does not depend on their values). diffusers' model holds the
SAME weight tensors (ours renamed by `to_diffusers_state_dict`), so agreement is checked first (relative L2 of the
decoded video), then each decode is timed with CUDA events (warmup 1, median of 3) with its peak memory. Our model
is timed in its default channels-last layout, then with one switch flipped at a time (`SWITCHED_VARIANTS`, each also
compared with the default decode's frames: the norm kernel over a power-of-two tile instead of three segments a row,
the upsamplers in the official order (nearest 2x, then the 3x3 conv) instead of the sub-pixel conv, its norms and
conv biases as torch ops instead of the fused passes (kernels/vae_elementwise.py), a fresh time-padded buffer for
every causal conv and chunk), and in plain NCDHW. cuDNN autotuning stays off (heuristic algorithm choice is
deterministic). Run from the repository root:

    python bench/bench_vae.py                 # 480p, 81 frames: latent [1,16,21,60,104]
    python bench/bench_vae.py --res 720p      # latent [1,16,21,90,160]
    python bench/bench_vae.py --res both --encode --profile
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import cuda_median_ms  # noqa: E402 (bench/ is on sys.path when a script runs)
from kernels import vae_elementwise  # noqa: E402
from turbo_batch.models import vae as vae_module  # noqa: E402
from turbo_batch.models.vae import LATENT_MEAN, LATENT_STD, VAEConfig, WanVAE, random_vae, to_diffusers_state_dict  # noqa: E402

RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}  # (width, height), 16:9


# Decode variants that differ from ours by one module switch, each flipped from its default: (what the switch does
# when on, module, switch). The row says which way it was flipped.
SWITCHED_VARIANTS = [
    ("segmented norm", vae_elementwise, "SEGMENTED_NORM"),
    ("sub-pixel upsamplers", vae_module, "SUBPIXEL_UPSAMPLE"),
    ("Triton elementwise", vae_elementwise, "USE_TRITON"),
    ("reused pad buffers", vae_module, "REUSE_PADDED_BUFFERS"),
]


def diffusers_twin(model: WanVAE):
    """diffusers' AutoencoderKLWan wrapping our weight tensors (no copy)."""
    from diffusers import AutoencoderKLWan

    with torch.device("meta"):
        twin = AutoencoderKLWan()  # its defaults are the Wan2.1 VAE, like VAEConfig()
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    twin.load_state_dict(to_diffusers_state_dict(sd), strict=True, assign=True)
    return twin.eval().requires_grad_(False)


def time_ms(fn, warmup: int, iters: int) -> tuple[float, float]:
    """Median milliseconds of `fn()` and peak GiB allocated above the memory already held before it ran."""
    ms, peak, base = cuda_median_ms(fn, warmup, iters)
    return ms, (peak - base) / 2**30


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return ((a - b).norm() / b.norm()).item()


def profile(fn, rows: int = 20) -> None:
    from torch.profiler import ProfilerActivity, profile as prof

    with prof(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        torch.cuda.synchronize()
    print(p.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=90))


def bench_norms(dev) -> None:
    """The decoder's RMS norm + SiLU at each width, one decode chunk's shape (4 frames written into a buffer with 2
    frames of time padding): the fused kernel against the four torch ops it replaces; then the bias + residual add
    against torch's two adds (x grows a little each call: the values do not matter to the timing)."""
    from triton.testing import do_bench

    print("RMS norm + SiLU, one chunk, bf16 channels-last (ms; GB/s counts each tensor read or written once)")
    for c, (h, w) in ((96, (480, 832)), (192, (240, 416)), (384, (120, 208))):
        x = torch.randn(1, c, 4, h, w, device=dev).bfloat16().contiguous(memory_format=torch.channels_last_3d)
        gamma = torch.rand(c, 1, 1, 1, device=dev).bfloat16()
        buf = torch.empty(1, c, 6, h, w, device=dev, dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last_3d)
        out = buf[:, :, 2:]
        ms = {name: do_bench(lambda f=f: f(x, gamma, True, out), warmup=10, rep=100)
              for name, f in (("kernel", vae_elementwise.rms_norm_silu_triton), ("torch", vae_elementwise.rms_norm_silu_ref))}
        gbs = 2 * x.numel() * 2 / ms["kernel"] / 1e6
        print(f"  C={c:3} {h}x{w}: kernel {ms['kernel']:.3f} ms ({gbs:.0f} GB/s), torch {ms['torch']:.3f} ms, "
              f"{ms['torch'] / ms['kernel']:.2f}x")
        bias, res = torch.randn(c, device=dev).bfloat16(), torch.randn_like(x)
        kernel = do_bench(lambda: vae_elementwise.bias_residual_add_triton(x, bias, res), warmup=10, rep=100)
        torch_ms = do_bench(lambda: vae_elementwise.bias_residual_add_ref(x, bias, res), warmup=10, rep=100)
        print(f"  {'':5} bias + residual add: kernel {kernel:.3f} ms ({3 * x.numel() * 2 / kernel / 1e6:.0f} GB/s), "
              f"torch's two adds {torch_ms:.3f} ms, {torch_ms / kernel:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", choices=["480p", "720p", "both"], default="480p")
    ap.add_argument("--frames", type=int, default=81, help="pixel frames (4k+1)")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--encode", action="store_true", help="also time encode (ours vs diffusers)")
    ap.add_argument("--no-diffusers", action="store_true", help="time only our model")
    ap.add_argument("--profile", action="store_true", help="print the top CUDA kernels of one decode of ours")
    ap.add_argument("--norms", action="store_true", help="also time the elementwise kernels alone against torch")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_vae.py needs a CUDA GPU")
    torch.backends.cudnn.benchmark = False
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name()}")

    t0 = time.time()
    ours = random_vae(VAEConfig(), seed=0, device=dev, dtype=torch.bfloat16, on_device=True)
    twin = None if args.no_diffusers else diffusers_twin(ours)
    print(f"models ready in {time.time() - t0:.1f} s")
    if args.norms:
        bench_norms(dev)
    mean = torch.tensor(LATENT_MEAN, device=dev).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENT_STD, device=dev).view(1, -1, 1, 1, 1)

    rows = []
    for res in (["480p", "720p"] if args.res == "both" else [args.res]):
        w, h = RESOLUTIONS[res]
        t = 1 + (args.frames - 1) // 4
        g = torch.Generator(device=dev).manual_seed(0)
        z = torch.randn((1, 16, t, h // 8, w // 8), generator=g, device=dev)  # normalised latent
        z_raw = (z * std + mean).to(torch.bfloat16)  # what diffusers' pipeline hands its VAE
        shape = f"[1,16,{t},{h // 8},{w // 8}]"

        def ours_decode():
            return ours.decode(z)

        def twin_decode():
            with torch.no_grad():
                return twin.decode(z_raw).sample

        err = "-"
        if twin is not None:
            a = ours_decode()
            b = twin_decode()
            err = f"{rel_l2(a, b):.2e}"
            print(f"{res}: decoded {tuple(a.shape)}, rel L2 ours vs diffusers {err}, "
                  f"max|diff| {(a - b.float()).abs().max().item():.3f}")
            del a, b
        ours.channels_last = True
        ms, gib = time_ms(ours_decode, args.warmup, args.iters)
        rows.append((res, "decode", "ours (channels-last)", shape, ms, gib, err))
        if args.profile:
            profile(ours_decode)
        default_video = ours_decode()
        for what, module, switch in SWITCHED_VARIANTS:  # each: one module switch flipped, timed, flipped back
            default = getattr(module, switch)
            label = f"ours ({'no ' if default else ''}{what})"
            setattr(module, switch, not default)
            try:
                ms, gib = time_ms(ours_decode, args.warmup, args.iters)
                video = ours_decode()
                same = "same bits" if torch.equal(video, default_video) else f"{rel_l2(video, default_video):.2e}"
                print(f"{res} {label}: {ms:.1f} ms, against the default decode: {same}")
                del video
            finally:
                setattr(module, switch, default)
            rows.append((res, "decode", label, shape, ms, gib, err))
        del default_video
        ours.channels_last = False
        ms, gib = time_ms(ours_decode, args.warmup, args.iters)
        rows.append((res, "decode", "ours (NCDHW)", shape, ms, gib, err))
        ours.channels_last = None
        if twin is not None:
            ms, gib = time_ms(twin_decode, args.warmup, args.iters)
            rows.append((res, "decode", "diffusers", shape, ms, gib, err))

        if args.encode:
            video = ours.decode(z)
            vshape = f"[1,3,{video.shape[2]},{h},{w}]"

            def ours_encode():
                return ours.encode(video)

            def twin_encode():
                with torch.no_grad():
                    return twin.encode(video.to(torch.bfloat16)).latent_dist.mode()

            eerr = "-"
            if twin is not None:
                eerr = f"{rel_l2(ours_encode() * std + mean, twin_encode()):.2e}"
            ms, gib = time_ms(ours_encode, args.warmup, args.iters)
            rows.append((res, "encode", "ours (channels-last)", vshape, ms, gib, eerr))
            if twin is not None:
                ms, gib = time_ms(twin_encode, args.warmup, args.iters)
                rows.append((res, "encode", "diffusers", vshape, ms, gib, eerr))
            del video
        torch.cuda.empty_cache()

    print(f"\nWan2.1 VAE, bf16, batch 1, {args.frames} frames, median of {args.iters} (warmup {args.warmup}); "
          f"peak = GiB allocated above the resident weights (0.24 GiB)")
    print(f"{'res':5} {'op':7} {'impl':32} {'input':22} {'ms':>9} {'peak GiB':>9} {'vs diffusers':>12} {'rel L2':>9}")
    for res, op, impl, shape, ms, gib, err in rows:
        ref = next((r[4] for r in rows if r[0] == res and r[1] == op and r[2] == "diffusers"), None)
        ratio = f"{ref / ms:.2f}x" if ref else "-"
        print(f"{res:5} {op:7} {impl:32} {shape:22} {ms:9.1f} {gib:9.2f} {ratio:>12} {err:>9}")
    print("(vs diffusers = diffusers time / this time; > 1 means faster than diffusers)")


if __name__ == "__main__":
    main()
