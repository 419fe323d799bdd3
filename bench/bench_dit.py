"""DiT forward benchmark on one GPU: turbo_batch's WanDiT vs diffusers' WanTransformer3DModel, same weights.

Random bf16 weights (speed does not depend on their values), one forward at a real video size. Both models
hold the SAME weight tensors (diffusers' are our tensors renamed, with its fp32-kept modules upcast as
`from_pretrained(torch_dtype=bfloat16)` would), so agreement is checked first (relative L2, ~1e-2 expected in
bf16), then each is timed with CUDA events (warmup, median). Run from the repository root:

    python bench/bench_dit.py --model 1.3b --res 480p --frames 81 --attention dense
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import cuda_median_ms  # noqa: E402 (bench/ is on sys.path when a script runs)
from turbo_batch.models.dit import DiTConfig  # noqa: E402
from turbo_batch.models.dit_checkpoints import diffusers_config, random_dit, to_diffusers_state_dict  # noqa: E402

MODELS = {
    "1.3b": DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "14b": DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}
RESOLUTIONS = {"480p": (832, 480), "720p": (1280, 720)}  # (width, height), 16:9


def diffusers_twin(model, cfg: DiTConfig, device):
    """diffusers' model wrapping our weight tensors (no copy), fp32 where diffusers keeps fp32."""
    from diffusers import WanTransformer3DModel
    from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed

    with torch.device("meta"):
        twin = WanTransformer3DModel(**diffusers_config(cfg))
    twin.load_state_dict(to_diffusers_state_dict(model.state_dict()), strict=True, assign=True)
    twin.rope = WanRotaryPosEmbed(cfg.head_dim, cfg.patch_size, 1024).to(device)  # non-persistent buffers
    keep = WanTransformer3DModel._keep_in_fp32_modules
    for name, p in twin.named_parameters():
        if any(m in name.split(".") for m in keep):
            p.data = p.data.float()
    return twin.eval().requires_grad_(False)


def time_ms(fn, warmup: int, iters: int) -> tuple[float, float]:
    """Median milliseconds of `fn()` and peak GiB allocated while it ran."""
    ms, peak, _ = cuda_median_ms(fn, warmup, iters)
    return ms, peak / 2**30


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    ap.add_argument("--res", choices=sorted(RESOLUTIONS), default="480p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--attention", choices=["dense", "sla"], default="dense",
                    help="sla: also time our DiT with the SLA Triton kernel (kernels.sla)")
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-diffusers", action="store_true", help="time only our DiT")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_dit.py needs a CUDA GPU")

    device = torch.device("cuda")
    cfg = MODELS[args.model]
    width, height = RESOLUTIONS[args.res]
    latent = (1, cfg.in_dim, 1 + (args.frames - 1) // 4, height // 8, width // 8)
    tokens = latent[2] * latent[3] * latent[4] // 4
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | Wan {args.model} {args.res} {args.frames}f "
          f"latent {list(latent)} = {tokens} tokens, context [1, {cfg.text_len}, {cfg.text_dim}], bf16")

    t0 = time.perf_counter()
    ours = random_dit(cfg, args.seed, device=device, dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
    g = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(latent, generator=g, device=device).to(torch.bfloat16)
    timestep = torch.tensor([960.0], device=device).to(torch.bfloat16).float()  # the caller's bf16 rounding
    context = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g, device=device).to(torch.bfloat16)
    print(f"built random weights in {time.perf_counter() - t0:.1f} s; "
          f"weights {torch.cuda.memory_allocated() / 2**30:.2f} GiB")

    rows = []  # (name, attention, ms, peak GiB)
    with torch.no_grad():
        ref = ours(x, timestep, context)
        if not args.no_diffusers:
            import diffusers

            twin = diffusers_twin(ours, cfg, device)
            theirs = twin(x, timestep, context, return_dict=False)[0]
            print(f"agreement ours vs diffusers {diffusers.__version__} (dense, bf16): "
                  f"relative L2 error {rel_l2(ref, theirs):.2e}")
            del theirs
            ms, peak = time_ms(lambda: twin(x, timestep, context, return_dict=False), args.warmup, args.iters)
            rows.append(("diffusers", "dense", ms, peak))
            del twin
            torch.cuda.empty_cache()
        ms, peak = time_ms(lambda: ours(x, timestep, context), args.warmup, args.iters)
        rows.append(("turbo_batch", "dense", ms, peak))
        if args.attention == "sla":
            ours.set_attention("sla", args.topk)
            sla_out = ours(x, timestep, context)
            print(f"ours sla (topk {args.topk}) vs ours dense: relative L2 error {rel_l2(sla_out, ref):.2e}"
                  " (random weights: SLA is an approximation, not expected to be small)")
            del sla_out
            ms, peak = time_ms(lambda: ours(x, timestep, context), args.warmup, args.iters)
            rows.append(("turbo_batch", f"sla {args.topk}", ms, peak))

    base = rows[0][2]
    print(f"\n{'model':<12} {'attention':<10} {'ms':>9} {'vs first':>9} {'peak GiB':>9}")
    for name, attn, ms, peak in rows:
        print(f"{name:<12} {attn:<10} {ms:>9.1f} {base / ms:>8.2f}x {peak:>9.2f}")
    print(f"(median of {args.iters} after {args.warmup} warmup; 'vs first' = speedup over the first row)")


if __name__ == "__main__":
    main()
