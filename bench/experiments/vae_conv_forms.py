"""Can cuDNN run the VAE's full-resolution 96-channel 3x3x3 convs faster in another form? (42% of a 480p decode.)

Why: at 96 output channels cuDNN's mode-B kernel (a 128-wide tile) runs at ~282 conv TFLOP/s against 426-471 for the
192- and 384-channel convs (`bench/experiments/vae_layer_times.py`, session 21). Each form below computes the same
conv of one decode chunk (6 time-padded input frames -> 4 output frames, channels-last, bf16), timed with
`triton.testing.do_bench`, its error against the float32 conv and whether it gives the same bits as the plain conv:

  plain          conv3d 96 -> 96, as the model runs it
  split 64+32    two convs over the same input, output channels [0, 64) and [64, 96), each a narrower tile
  split 3x32     three convs of 32 output channels
  padded 128     zero weights up to 128 output channels (the tile full of zeros: the waste made explicit)
  ncdhw          the plain conv on NCDHW tensors (cuDNN's other kernel family)
  triton (...)   kernels/conv3d.py's implicit GEMM at launch (BLOCK_M, BLOCK_K, FT, warps, stages): FT output frames a
                 program share their input frames' loads

    python bench/experiments/vae_conv_forms.py [--res 720p]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


TRITON_LAUNCHES = {
    96: [(128, 32, 2, 8, 3), (128, 32, 2, 8, 4), (128, 32, 1, 4, 3), (128, 32, 1, 8, 4), (64, 32, 2, 4, 3),
         (256, 32, 1, 8, 3), (64, 32, 1, 4, 4)],
    192: [(128, 64, 1, 8, 3), (128, 32, 1, 8, 4), (64, 64, 2, 4, 3), (64, 32, 2, 4, 4)],
}


def triton_forms(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict:
    from kernels.conv3d import causal_conv3d_triton, pack_weight

    packed = pack_weight(w).to(x.dtype)
    return {f"triton {launch}": (lambda launch=launch: causal_conv3d_triton(x, w, b, packed, launch))
            for launch in TRITON_LAUNCHES[x.shape[1]]}


def forms(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> dict:
    cl = torch.channels_last_3d
    w_cl = w.contiguous(memory_format=cl)
    w_pad = torch.cat([w, torch.zeros_like(w[:32])]).contiguous(memory_format=cl)
    b_pad = torch.cat([b, torch.zeros_like(b[:32])])
    x_nc, w_nc = x.contiguous(), w.contiguous()
    pad = (0, 1, 1)

    def split(sizes):
        def run():
            out = torch.empty((x.shape[0], w.shape[0], x.shape[2] - 2, *x.shape[3:]), dtype=x.dtype, device=x.device,
                              memory_format=cl)
            start = 0
            for n in sizes:
                out[:, start:start + n] = F.conv3d(x, w_cl[start:start + n], b[start:start + n], padding=pad)
                start += n
            return out
        return run

    runs = {"plain": lambda: F.conv3d(x, w_cl, b, padding=pad)}
    if w.shape[0] == 96:
        runs.update({"split 64+32": split((64, 32)), "split 3x32": split((32, 32, 32)),
                     "padded 128": lambda: F.conv3d(x, w_pad, b_pad, padding=pad)[:, :96]})
    runs["ncdhw"] = lambda: F.conv3d(x_nc, w_nc, b, padding=pad)
    return runs


def main() -> None:
    from triton.testing import do_bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", choices=["480p", "720p"], default="480p")
    args = ap.parse_args()
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.allow_tf32 = False  # the float32 reference conv in float32
    h, w = {"480p": (480, 832), "720p": (720, 1280)}[args.res]
    g = torch.Generator(device="cuda").manual_seed(0)
    for c, (hh, ww) in ((96, (h, w)), (192, (h // 2, w // 2))):
        x = torch.randn(1, c, 6, hh, ww, device="cuda", generator=g).bfloat16().contiguous(
            memory_format=torch.channels_last_3d)
        wt = (torch.randn(c, c, 3, 3, 3, device="cuda", generator=g) / (27 * c) ** 0.5).bfloat16()
        bias = torch.randn(c, device="cuda", generator=g).bfloat16()
        exact = F.conv3d(x.float(), wt.float(), bias.float(), padding=(0, 1, 1))
        flop = 2 * exact.numel() * wt[0].numel()
        print(f"{c} -> {c} channels, 4 output frames of {hh} x {ww} ({flop / 1e9:.0f} GFLOP), "
              f"{torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
        runs = {**forms(x, wt, bias), **triton_forms(x, wt, bias)}
        plain = runs["plain"]()
        for name, fn in runs.items():
            try:
                y = fn()
            except Exception as e:  # a launch that does not compile (registers, shared memory) is a result too
                print(f"  {name:12} failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
                continue
            ms = do_bench(fn, warmup=5, rep=50)
            err = ((y.float() - exact).norm() / exact.norm()).item()
            print(f"  {name:28} {ms:7.3f} ms  {flop / ms / 1e9:5.0f} TFLOP/s  err {err:.2e}  "
                  f"same bits as plain: {torch.equal(y, plain)}")


if __name__ == "__main__":
    main()
