"""Whole DiT forward on one GPU: bf16 dense, FP8, SLA, FP8 + SLA, beside diffusers, with a time breakdown.

Random weights (speed does not depend on values). For each variant: median forward time, peak memory (from the
first forward on, the model already quantized), relative error against our bf16 output with the same attention
(the `bf16` or `sla` variant, when it runs first), and a profiler breakdown of GPU time into linear (GEMM + FP8
quant), attention (SDPA / SLA kernels and router) and other (norms, modulation, RoPE, elementwise).

    python bench/bench_forward.py --model 1.3b --res 480p
    python bench/bench_forward.py --gemms --variants bf16,fp8,sla,fp8+sla,fp8+sla+graph   # the issue's table, one run
(fp8: the runtime default, which keeps self_attn.o and cross_attn.o/k/v in bf16; fp8-all: every block Linear;
a `+graph` suffix replays the forward from a CUDA graph, `turbo_batch.models.cuda_graph`, and checks that its bits
are the eager forward's; `+unfused` turns off the GEMM epilogue fusion (residual adds and the FFN's GELU + quantization inside Triton GEMMs,
kernels/fp8_gemm.py, on by default on Hopper): cuBLAS GEMMs, then the elementwise kernels; `+gluon` / `+triton`
run every fused GEMM through the ping-pong Gluon kernel (kernels/gemm_gluon.py) / the Triton kernel; `+plainattn`
runs the Gluon SLA kernel without its intra-warpgroup overlap, kernels/sla_gluon.py; `+nosplit` turns off the
wave-tail split, `sla.TAIL_SPLIT`, which only the Triton SLA kernel uses by default; `+intcast` runs the Triton
norm and quantization kernels as before session 15: bf16 rounding by integer ops, a clamp before the hardware e4m3
cast (the same bits as the hardware casts: compare the printed output hashes). `--prompt-tokens N` passes an
N-token text context, as the pipeline passes a prompt's tokens; the DiT pads it to 512 rows, or, up to
dit.COLLAPSE_MAX_ROWS (0 by default: off), collapses the padding, dit.collapse_text_padding)
    python bench/bench_forward.py --model 14b --res 720p --variants fp8+sla --no-diffusers
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _shapes import LATENT, MODELS  # noqa: E402 (bench/ is on sys.path when a script runs)
from _timing import cuda_median_ms  # noqa: E402
from turbo_batch.models.dit import DiTConfig  # noqa: E402
from turbo_batch.models.dit_checkpoints import random_dit  # noqa: E402
from turbo_batch.models.cuda_graph import GraphedForward  # noqa: E402
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_  # noqa: E402
from kernels import fp8_linear, norms, sla, sla_gluon  # noqa: E402
from kernels.fp8_gemm import GLUON_DEFAULT, set_gluon_gemms  # noqa: E402

# name -> (attention backend, None for bf16 or the Linears fp8 keeps in bf16: the runtime default, or none at all
# = every block Linear in fp8 as TurboDiffusion does)
VARIANTS = {"bf16": ("dense", None), "fp8": ("dense", DEFAULT_KEEP_BF16), "fp8-all": ("dense", ()),
            "sla": ("sla", None), "fp8+sla": ("sla", DEFAULT_KEEP_BF16), "fp8-all+sla": ("sla", ())}


def forward_inputs(model: str = "1.3b", res: str = "480p", frames: int = 81, device: str = "cuda",
                   prompt_tokens: int = 512):
    """(config, latents, timestep, text context): the random inputs of every forward benchmark (seed first). The
    context has `prompt_tokens` rows, as the pipeline passes a prompt's embedding: the DiT zero-pads it to 512 rows
    (512: a prompt that fills the text window, the most expensive case)."""
    cfg = DiTConfig(**MODELS[model])
    h, w = LATENT[res]
    x = torch.randn(1, 16, 1 + (frames - 1) // 4, h, w, device=device, dtype=torch.bfloat16)
    ts = torch.tensor([900.0], device=device)
    ctx = torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16)[:, :prompt_tokens]
    return cfg, x, ts, ctx


def default_model(cfg: DiTConfig, device: str = "cuda"):
    """The DiT as served by default: random weights, FP8 with the default keep-set, SLA at top-k 0.1."""
    model = random_dit(cfg, 0, device=device, dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
    quantize_linears_(model, keep=DEFAULT_KEEP_BF16)
    model.set_attention("sla", 0.1)
    return model


def timed(fn, warmup=2, iters=5):
    return cuda_median_ms(fn, warmup, iters, reset_peak=False)[0]  # the peak also covers the untimed forwards


def category(name: str) -> str:
    n = name.lower()
    if any(s in n for s in ("gemm", "cutlass", "xmma", "scaled_mm", "sm90_", "nvjet", "quant", "cublas", "matmul")):
        return "linear"
    if any(s in n for s in ("flash", "attn", "attention", "sla", "fmha", "topk", "router", "_sparse", "linear_branch")):
        return "attention"
    return "other"


def breakdown(fn) -> dict:
    """GPU time per category over one forward, from the profiler's kernel list."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    top = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if t <= 0 or evt.key.startswith("ProfilerStep") or str(getattr(evt, "device_type", "")).endswith("CPU"):
            continue
        c = category(evt.key)
        out[c] += t / 1000.0
        top[evt.key] = (t / 1000.0, evt.count)
    out["top"] = sorted(top.items(), key=lambda kv: -kv[1][0])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    ap.add_argument("--res", choices=sorted(LATENT), default="480p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--variants", default="bf16,fp8,fp8-all,sla,fp8+sla,fp8-all+sla")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--no-diffusers", action="store_true")
    ap.add_argument("--prompt-tokens", type=int, default=512,
                    help="rows of the text context (a prompt's umT5 tokens); diffusers gets them zero-padded to 512")
    ap.add_argument("--gemms", action="store_true",
                    help="first time this model's GEMMs alone, bf16 against FP8 (bench_linear.py's table), in this run")
    ap.add_argument("--json", default=None)
    ap.add_argument("--top", type=int, default=6, help="kernels listed per variant, by GPU time in one forward")
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = "cuda"
    cfg, x, ts, ctx = forward_inputs(args.model, args.res, args.frames, dev, args.prompt_tokens)
    tokens = x.shape[2] * x.shape[3] * x.shape[4] // 4
    print(f"{torch.cuda.get_device_name()} | torch {torch.__version__} | Wan {args.model} {args.res} {args.frames}f "
          f"= {tokens} tokens | SLA topk {args.topk} | prompt of {ctx.shape[1]} tokens")
    if args.gemms:
        from bench_linear import gemm_table

        d, f, m = cfg.dim, cfg.ffn_dim, tokens
        with torch.no_grad():
            gemm_table(100, [(args.model, "self q/k/v/o, cross q/o", m, d, d), (args.model, "ffn up", m, d, f),
                             (args.model, "ffn down", m, f, d), (args.model, f"cross k/v ({ctx.shape[1]} text)",
                                                                ctx.shape[1], d, d)])
    results = []
    refs = {}  # attention backend -> our bf16 output with it (the "bf16" and "sla" variants)
    default_routes = dict(GLUON_DEFAULT)
    default_wave_slots = sla.TAIL_SPLIT["wave_slots"]
    iters = args.iters if args.model == "1.3b" else min(args.iters, 3)

    if not args.no_diffusers:
        from bench_dit import diffusers_twin

        model = random_dit(cfg, 0, device=dev, dtype=torch.bfloat16, on_device=True)
        theirs = diffusers_twin(model, cfg, dev)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            padded = torch.nn.functional.pad(ctx, (0, 0, 0, cfg.text_len - ctx.shape[1]))  # as its pipeline pads
            fn = lambda: theirs(x, ts, padded, return_dict=False)[0]  # noqa: E731
            ms = timed(fn, iters=iters)
            parts = breakdown(fn)
        results.append({"variant": "diffusers bf16", "ms": ms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                        "rel_err": None, **{k: parts[k] for k in ("linear", "attention", "other")}})
        del theirs
        gc.collect()
        torch.cuda.empty_cache()

    for name in args.variants.split(","):
        graphed = "+graph" in name
        unfused = "+unfused" in name
        gluon_flag = "+gluon" in name or "+triton" in name
        if gluon_flag:
            set_gluon_gemms("+gluon" in name)
        sla_gluon.GLUON_ATTENTION["overlap"] = "+plainattn" not in name
        sla.TAIL_SPLIT["wave_slots"] = 0 if "+nosplit" in name else default_wave_slots
        norms.HW_ROUNDING = fp8_linear.SATURATING_CAST = "+intcast" not in name
        backend, keep = VARIANTS[name.replace("+graph", "").replace("+unfused", "").replace("+gluon", "")
                                 .replace("+triton", "").replace("+plainattn", "").replace("+nosplit", "")
                                 .replace("+intcast", "")]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = random_dit(cfg, 0, device=dev, dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
        if keep is not None:
            quantize_linears_(model, keep=keep)
        model.set_attention(backend, args.topk)
        model.set_fused_epilogues(not unfused)
        weights_gib = torch.cuda.memory_allocated() / 2**30
        # peak of the model as served: building 14B in bf16 before quantizing it would otherwise set the peak
        torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            fn = lambda: model(x, ts, ctx)  # noqa: E731
            eager_vs_graph = None
            if graphed:
                graphs = GraphedForward()
                eager = fn()
                fn = lambda: graphs(model, x, ts, ctx)  # noqa: E731
            out = fn()
            if graphed:
                eager_vs_graph = torch.equal(out, eager)
                del eager
            if keep is None and name in ("bf16", "sla"):
                refs.setdefault(backend, out.float())
            ref = refs.get(backend)
            err = ((out.float() - ref).norm() / ref.norm()).item() if ref is not None else None
            again = fn()
            same_bits = torch.equal(out, again)
            digest = hashlib.sha256(out.view(torch.uint8).cpu().numpy().tobytes()).hexdigest()[:16]
            ms = timed(fn, iters=iters)
            parts = breakdown(fn)
        results.append({"variant": f"ours {name}", "ms": ms, "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                        "weights_gib": weights_gib, "rel_err": err, "same_bits_twice": same_bits, "sha256": digest,
                        "graph_bits_equal_eager": eager_vs_graph,
                        "finite": bool(torch.isfinite(out).all()), **{k: parts[k] for k in ("linear", "attention", "other")},
                        "top": parts["top"]})
        del model, out, again, fn
        if gluon_flag:
            set_gluon_gemms(default_routes)
        if graphed:
            del graphs
        gc.collect()

    base = results[0]["ms"]
    print(f"\n{'variant':<20}{'ms':>9}{'speedup':>9}{'linear':>9}{'attn':>9}{'other':>9}{'peak GiB':>10}{'rel err':>10}{'bits':>6}")
    for r in results:
        err = "-" if r["rel_err"] is None else f"{r['rel_err']:.2e}"
        bits = "-" if "same_bits_twice" not in r else ("same" if r["same_bits_twice"] else "DIFF")
        print(f"{r['variant']:<20}{r['ms']:>9.1f}{base / r['ms']:>8.2f}x{r['linear']:>9.1f}{r['attention']:>9.1f}"
              f"{r['other']:>9.1f}{r['peak_gib']:>10.2f}{err:>10}{bits:>6}")
    print("(ms: median forward; linear/attn/other: profiler GPU ms in one forward; rel err vs ours bf16 with the"
          " same attention; speedup vs the first row)")
    for r in results:
        if "top" in r:
            print(f"{r['variant']}: output sha256 {r['sha256']}")
            if r.get("graph_bits_equal_eager") is not None:
                print(f"{r['variant']}: graph replay bits equal the eager forward's: {r['graph_bits_equal_eager']}")
            print(f"top kernels {r['variant']} (ms in one forward, launches):")
            for k, (v, n) in r["top"][: args.top]:
                print(f"  {v:8.2f} {n:5d}  {k[:110]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)


if __name__ == "__main__":
    main()
