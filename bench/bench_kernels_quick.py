"""Quick (~1-2 min) GPU timing of the hot Triton kernels, with error checks, before/after in one run.

What it times (triton.testing.do_bench medians, ms):
  quant       per-token fp8 quantization, [32760, 1536] and [32760, 8960] bf16 (plain and fused GELU), plus a
              sweep of launch configs / hardware fp8 cvt at K = 8960 (to pick the fixed default)
  sla         the full SLA op, its plan (statistics + finalize + scores + top-k) and the fused kernel at the
              Wan2.1-1.3B 480p shape (1x32760x12x128, topk 0.1), sweeps of fixed attention-kernel candidates
              (k-blocks per softmax step x warps x stages) and statistics-pass configs (tile, programs,
              warps, stages),
              and the full op at the 14B 720p shape (1x75600x40x128)
  sdpa        dense F.scaled_dot_product_attention (default backend) at the 1.3B shape: the baseline
"before" columns come from the committed kernels (`git show HEAD:kernels/...`) when git is available.

    python bench/bench_kernels_quick.py [--no-baseline] [--no-14b] [--sla-only] [--json out.json]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from kernels import fp8_linear as fp8  # noqa: E402
from kernels import sla  # noqa: E402

ROWS: list[tuple[str, str, float | None, float | None, str]] = []  # (group, name, before, after, note)


def bench(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def add(group, name, before, after, note=""):
    ROWS.append((group, name, before, after, note))
    b = "-" if before is None else f"{before:.3f}"
    a = "-" if after is None else f"{after:.3f}"
    print(f"  {group:6s} {name:44s} before {b:>8s}  after {a:>8s}  {note}", flush=True)


def load_baseline(rel_path: str, name: str):
    """The committed version of a kernel module, imported under another name (None without git).

    Where the checkout has no git (a copied tree), $BASELINE_DIR/<file name> stands in for HEAD's version.
    """
    copy = Path(os.environ.get("BASELINE_DIR", "/nonexistent")) / Path(rel_path).name
    try:
        src = copy.read_text() if copy.is_file() else subprocess.run(
            ["git", "show", f"HEAD:{rel_path}"], cwd=ROOT, capture_output=True, text=True, check=True,
            timeout=30).stdout
    except Exception as exc:  # noqa: BLE001
        print(f"  (no baseline for {rel_path}: {type(exc).__name__})")
        return None
    path = Path(tempfile.mkdtemp()) / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def e4m3_agreement(q, s, qr, sr) -> str:
    ordinal = lambda t: torch.where(t.view(torch.uint8) >= 128, -(t.view(torch.uint8).int() & 0x7F),
                                    t.view(torch.uint8).int())
    steps = (ordinal(q) - ordinal(qr)).abs()
    return (f"max_steps={int(steps.max())} diff={float((steps > 0).float().mean()):.2e} "
            f"scale_rel={float(((s - sr).abs() / sr).max()):.1e}")


def bench_quant(old, results):
    print("== per-token fp8 quantization (bf16 in)", flush=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    for K in (1536, 8960):
        x = (torch.randn(32760, K, device="cuda", generator=g) * 2).bfloat16()
        qr, sr = fp8.quantize_per_token_fp8_ref(x)
        q, s = fp8.quantize_per_token_fp8_triton(x)
        exact = torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)
        before = bench(lambda: old.quantize_per_token_fp8_triton(x)) if old else None
        after = bench(lambda: fp8.quantize_per_token_fp8_triton(x))
        add("quant", f"plain [32760,{K}]", before, after, f"bitwise={exact}")
        results[f"quant_{K}"] = after
        gr, gsr = fp8.quantize_gelu_per_token_fp8_ref(x)
        q, s = fp8.quantize_gelu_per_token_fp8_triton(x)
        q2, s2 = fp8.quantize_gelu_per_token_fp8_triton(x)
        rep = torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2)
        before = bench(lambda: old.quantize_gelu_per_token_fp8_triton(x)) if old else None
        after = bench(lambda: fp8.quantize_gelu_per_token_fp8_triton(x))
        add("quant", f"gelu  [32760,{K}]", before, after, f"{e4m3_agreement(q, s, gr, gsr)} repeat={rep}")
        results[f"gelu_{K}"] = after
        del qr, sr, gr, gsr
    for K in (5120, 13824):  # 14B widths, 14B 720p token count
        x = (torch.randn(75600, K, device="cuda", generator=g) * 2).bfloat16()
        add("quant", f"plain [75600,{K}]", None, bench(lambda: fp8.quantize_per_token_fp8_triton(x)))
        add("quant", f"gelu  [75600,{K}]", None, bench(lambda: fp8.quantize_gelu_per_token_fp8_triton(x)))
    # launch-config sweep at the FFN width (to pick the fixed default)
    K = 8960
    x = (torch.randn(32760, K, device="cuda", generator=g) * 2).bfloat16()
    qr, sr = fp8.quantize_per_token_fp8_ref(x)
    gr, gsr = fp8.quantize_gelu_per_token_fp8_ref(x)
    seg = dict(looped=False, W1=8192, W2=512, W3=256)
    configs = {
        "seg r1 w2": dict(seg, ROWS=1, num_warps=2), "seg r1 w4": dict(seg, ROWS=1, num_warps=4),
        "seg r2 w4": dict(seg, ROWS=2, num_warps=4), "seg r2 w8": dict(seg, ROWS=2, num_warps=8),
        "loop 1024 w8": dict(looped=True, BLOCK_K=1024, num_warps=8),
    }
    sweep = {}
    for name, cfg in configs.items():
        for hw in (True,):
            try:
                q, s = fp8.quantize_per_token_fp8_triton(x, config=cfg, hw_cvt=hw)
                exact = torch.equal(q.view(torch.uint8), qr.view(torch.uint8)) and torch.equal(s, sr)
                tp = bench(lambda: fp8.quantize_per_token_fp8_triton(x, config=cfg, hw_cvt=hw))
                q, s = fp8.quantize_gelu_per_token_fp8_triton(x, config=cfg, hw_cvt=hw)
                agree = e4m3_agreement(q, s, gr, gsr)
                tg = bench(lambda: fp8.quantize_gelu_per_token_fp8_triton(x, config=cfg, hw_cvt=hw))
                sweep[f"{name} hw={hw}"] = (tp, tg)
                print(f"  sweep K=8960 {name:14s} hw_cvt={hw!s:5s}: plain {tp:.3f} ms (bitwise={exact})  "
                      f"gelu {tg:.3f} ms ({agree})", flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"  sweep {name} hw={hw}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    results["quant_sweep"] = sweep


def make_qkv(shape, seed=0):
    from test_sla import make_proj, make_qkv as mk
    q, k, v = mk(*shape, seed=seed, dtype=torch.bfloat16, device="cuda")
    w, b = make_proj(shape[-1], device="cuda")
    return q, k, v, w, b


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def bench_sla(old, results, with_14b: bool):
    print("== SLA (bf16, topk 0.1)", flush=True)
    topk = 0.1
    q, k, v, w, b = make_qkv((1, 32760, 12, 128))
    ref = sla.sla_reference(q.float(), k.float(), v.float(), w, b, topk)
    out = sla.sla_triton(q, k, v, w, b, topk)
    rep = torch.equal(out, sla.sla_triton(q, k, v, w, b, topk))
    kept, kvw, ksum, bias = sla.sla_triton_plan(q, k, v, w, b, topk)
    routed = float((kept != sla.sla_router(q, k, topk)).any(-1).float().mean())
    note = f"rel_err={rel(out, ref):.2e} repeat={rep} router_rows_differing={routed:.1e}"
    if old:
        old_out = old.sla_triton(q, k, v, w, b, topk)
        note += f" old_rel_err={rel(old_out, ref):.2e}"
    del ref
    t_sdpa = bench(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)))
    add("attn", "sdpa dense 1.3B", None, t_sdpa)
    before = bench(lambda: old.sla_triton(q, k, v, w, b, topk)) if old else None
    after = bench(lambda: sla.sla_triton(q, k, v, w, b, topk))
    add("attn", "sla full op 1.3B", before, after, note + f" speedup_vs_sdpa={t_sdpa / after:.2f}x")
    results.update(sdpa_13b=t_sdpa, sla_13b=after)
    before = bench(lambda: old.sla_triton_plan(q, k, v, w, b, topk)) if old else None
    after = bench(lambda: sla.sla_triton_plan(q, k, v, w, b, topk))
    add("attn", "sla plan 1.3B", before, after)
    results["plan_13b"] = after
    add("attn", "  prologue (stats+finalize)", None, bench(lambda: sla.sla_prologue(q, k, v, w)))
    q_pool, k_pool, _, _ = sla.sla_prologue(q, k, v, w)
    add("attn", "  scores matmul", None, bench(lambda: q_pool @ k_pool.transpose(-1, -2)))
    scores = q_pool @ k_pool.transpose(-1, -2)
    n_keep = sla.n_kept_blocks(topk, k_pool.shape[2])
    add("attn", "  top-k select", None, bench(lambda: sla.sla_select_blocks(scores, n_keep)))
    for use_tma in (False, True):
        for pairs in (False, True):
            t = bench(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias, use_tma=use_tma, pairs=pairs))
            add("attn", f"  kernel tma={use_tma} pairs={pairs}", None, t)
            results[f"kernel_tma{int(use_tma)}_pairs{int(pairs)}"] = t
    add("attn", "  kernel default", None, bench(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias)))
    # attention-kernel sweep: fixed candidates (k-blocks per softmax step, gathered tile, warps, stages); the best
    # is hard-coded as sla.HOPPER_ATTENTION (H200 results in its comment)
    default_out = sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias)
    attn_sweep = {}
    for group, gather, warps, stages in ((2, False, 8, 2), (2, False, 8, 3), (2, True, 8, 2), (2, True, 8, 3),
                                         (2, True, 4, 2), (1, False, 8, 3)):
        cfg = dict(num_warps=warps, num_stages=stages)
        name = f"blocks_per_step={group} gather={gather} warps={warps} stages={stages}"
        try:
            run = lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias, blocks_per_step=group,
                                                   gather=gather, launch=cfg)
            o = run()
            t = bench(run)
            attn_sweep[name] = t
            print(f"  sweep attn {name}: {t:.3f} ms diff_vs_default={rel(o, default_out):.1e}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"  sweep attn {name}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    results["attn_sweep"] = attn_sweep
    # statistics-pass sweep (tile tokens per loop step, programs, warps, stages); the best is sla.STATS_LAUNCH
    saved = dict(sla.STATS_LAUNCH)
    want_pool = sla.sla_prologue(q, k, v, w)
    stats_sweep = {}
    # H200, 1.3B: 0.208-0.210 / 0.225-0.229 / 0.208 / 0.209-0.210 / 0.197 / 0.218 ms (committed pass 0.257 ms)
    for tile, target, warps, stages in ((64, 264, 8, 2), (64, 264, 4, 2), (64, 264, 8, 1), (128, 264, 8, 2),
                                        (64, 132, 8, 2), (64, 396, 8, 2)):
        sla.STATS_LAUNCH.update(target_programs=target, num_warps=warps, num_stages=stages, tile=tile)
        try:
            got = sla.sla_prologue(q, k, v, w)
            errs = " ".join(f"{rel(a, b_):.0e}" for a, b_ in zip(got, want_pool))
            t = bench(lambda: sla.sla_prologue(q, k, v, w))
            stats_sweep[f"t{tile}_p{target}_w{warps}_s{stages}"] = t
            print(f"  sweep stats tile={tile} target={target} warps={warps} stages={stages}: prologue {t:.3f} ms "
                  f"(rel diff vs default: {errs})", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"  sweep stats {tile}/{target}/{warps}/{stages}: FAILED {type(exc).__name__}: {str(exc)[:200]}",
                  flush=True)
    sla.STATS_LAUNCH.clear()
    sla.STATS_LAUNCH.update(saved)
    results["stats_sweep"] = stats_sweep
    if old:
        add("attn", "  prologue (stats+finalize), committed", None, bench(lambda: old.sla_prologue(q, k, v, w)))
    del q, k, v, kept, kvw
    if with_14b:
        q, k, v, w, b = make_qkv((1, 75600, 40, 128))
        before = bench(lambda: old.sla_triton(q, k, v, w, b, topk)) if old else None
        after = bench(lambda: sla.sla_triton(q, k, v, w, b, topk))
        add("attn", "sla full op 14B 720p", before, after)
        results["sla_14b"] = after
        before = bench(lambda: old.sla_triton_plan(q, k, v, w, b, topk)) if old else None
        add("attn", "sla plan 14B 720p", before, bench(lambda: sla.sla_triton_plan(q, k, v, w, b, topk)))
        add("attn", "  prologue 14B", None, bench(lambda: sla.sla_prologue(q, k, v, w)))
        q_pool, k_pool, _, _ = sla.sla_prologue(q, k, v, w)
        scores = q_pool @ k_pool.transpose(-1, -2)
        n_keep = sla.n_kept_blocks(topk, k_pool.shape[2])
        add("attn", "  top-k select 14B", None, bench(lambda: sla.sla_select_blocks(scores, n_keep)))
        for rows, warps in ((1, 4), (2, 8), (4, 8), (8, 8), (1, 8)):
            t = bench(lambda: sla.sla_select_blocks(scores, n_keep, rows, warps))
            same = torch.equal(sla.sla_select_blocks(scores, n_keep, rows, warps), sla.sla_select_blocks(scores, n_keep))
            print(f"  sweep select 14B rows={rows} warps={warps}: {t:.3f} ms (same={same})", flush=True)
        kept, kvw, ksum, bias = sla.sla_triton_plan(q, k, v, w, b, topk)
        add("attn", "  kernel default 14B", None, bench(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-14b", action="store_true")
    ap.add_argument("--sla-only", action="store_true", help="skip the fp8 quantization kernels")
    ap.add_argument("--json", default=os.path.join(os.environ.get("OUT", "."), "bench_kernels_quick.json"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    t0 = time.time()
    print(torch.cuda.get_device_name(), "torch", torch.__version__, "triton", triton.__version__, flush=True)
    old_fp8 = None if args.no_baseline or args.sla_only else load_baseline("kernels/fp8_linear.py",
                                                                            "baseline_fp8_linear")
    old_sla = None if args.no_baseline else load_baseline("kernels/sla.py", "baseline_sla")
    results: dict = {}
    with torch.no_grad():
        if not args.sla_only:
            bench_quant(old_fp8, results)
        bench_sla(old_sla, results, not args.no_14b)
    print(f"\n{'group':6s} {'kernel':44s} {'before ms':>10s} {'after ms':>10s}")
    for group, name, before, after, note in ROWS:
        fmt = lambda t: "-" if t is None else f"{t:.3f}"
        print(f"{group:6s} {name:44s} {fmt(before):>10s} {fmt(after):>10s}  {note}")
    print(f"total {time.time() - t0:.0f} s")
    try:
        Path(args.json).write_text(json.dumps({"rows": ROWS, "results": results}, indent=1, default=str))
    except OSError:
        pass


if __name__ == "__main__":
    main()
