"""Launch shapes of the collapsed-padding cross-attention kernel, then the forward with and without the collapse.

    python bench/experiments/cross_attention_sweep.py [--prompt-tokens 100] [--rounds 4]

1. Per call GPU time (CUDA-graph replays) of `kernels/cross_attention.py` at the 1.3B 480p and 14B 720p shapes for
   each (BLOCK_M, num_warps, num_stages), 64 / 128 / 256 prompt rows, against SDPA over 512 rows and over rows + 1.
   Beside them, the SDPA backend of the same function (`cross_attention_sdpa`: the pad weight as an additive bf16
   bias over PAD_TERMS copies of the pad key) under PyTorch's own dispatch and forced to cuDNN / memory-efficient.
2. The 1.3B FP8 + SLA forward replayed from CUDA graphs with a `--prompt-tokens` prompt: padding collapsed (the
   Triton kernel with the fastest launch shape at 128 rows; the SDPA backend) against every 512 rows through SDPA
   (`dit.COLLAPSE_MAX_ROWS = 0`), interleaved.

Written in session 18 after the then default shape (128 x 64 tiles, 8 warps, 2 stages) measured 0.174 ms at 65 keys
against 0.080 ms for SDPA over the same keys (H100). Session 19 (H100, `--prompt-tokens 100 --rounds 4`): (64, 4, 2)
fastest at every size (0.126 / 0.155 / 0.213 ms at 64 / 128 / 256 rows against 0.185 ms over 512 rows; now the
default), the SDPA backend 0.112 / 0.173 / 0.239; forward 147.29 (Triton) / 147.24 (SDPA) against 147.99 ms. Offline sm_90 compiles
(`offline_sass.py cross-attention --consts '{"BLOCK_M": ..}' --opts '{"num_warps": .., "num_stages": ..}'`, Triton
3.6) say why the default is slow and which shapes to expect most from, per SM (64K registers, 228 KB shared):
(128, 8, 2) 180 registers, 96 KB: one program; (128, 4, 2) spills 96 bytes; (64, 4, 2) 187 registers, 80 KB: two
programs; (64, 4, 3) 189, 112 KB: two; (64, 8, 2) 135 registers x 256 threads: one.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from _timing import graph_median_ms
from bench_cross_attention import sdpa
from bench_forward import default_model, forward_inputs

from kernels import cross_attention as ca
from turbo_batch.models import dit
from turbo_batch.models.cuda_graph import GraphedForward

CONFIGS = [(128, 8, 2), (128, 4, 2), (64, 4, 2), (64, 4, 3), (64, 8, 2)]
SDPA_BACKENDS = {"sdpa": None, "cudnn": SDPBackend.CUDNN_ATTENTION, "mem-eff": SDPBackend.EFFICIENT_ATTENTION}


def sdpa_line(q, k, v, pad, ref) -> str:
    """The SDPA backend's time and error under each dispatch, or why a forced backend refused."""
    parts = []
    for name, backend in SDPA_BACKENDS.items():
        def call():
            if backend is None:
                return ca.cross_attention_sdpa(q, k, v, pad)
            with sdpa_kernel(backend):
                return ca.cross_attention_sdpa(q, k, v, pad)
        try:
            err = ((call().float() - ref).norm() / ref.norm()).item()
            parts.append(f"{name} {graph_median_ms(call):.4f} ({err:.1e})")
        except RuntimeError as e:
            parts.append(f"{name} failed: {str(e).splitlines()[0][:80]}")
    return " | ".join(parts)


def use(cfg):
    ca.BLOCK_M, ca.NUM_WARPS, ca.NUM_STAGES = cfg


def sweep() -> tuple:
    """The launch shape fastest at 128 rows for the 1.3B shape (then timed at the 14B shape beside the default)."""
    best = None
    for name, (L, H) in {"1.3b": (32760, 12), "14b": (75600, 40)}.items():
        q = torch.randn(1, L, H, 128, device="cuda", dtype=torch.bfloat16)
        k_all = torch.randn(1, 512, H, 128, device="cuda", dtype=torch.bfloat16)
        v_all = torch.randn_like(k_all)
        print(f"\n{name}: SDPA over 512 rows {graph_median_ms(lambda: sdpa(q, k_all, v_all)):.4f} ms")
        configs = CONFIGS if best is None else sorted({CONFIGS[0], best})
        at128 = {}
        for rows in (64, 128, 256):
            k, v = k_all[:, : rows + 1].contiguous(), v_all[:, : rows + 1].contiguous()
            ref = ca.cross_attention_reference(q, k, v, 512 - rows).float()
            line = []
            for cfg in configs:
                use(cfg)
                ms = graph_median_ms(lambda: ca.cross_attention(q, k, v, 512 - rows))
                err = ((ca.cross_attention(q, k, v, 512 - rows).float() - ref).norm() / ref.norm()).item()
                line.append(f"{cfg}: {ms:.4f} ({err:.1e})")
                if rows == 128:
                    at128[cfg] = ms
            print(f"  rows {rows}: SDPA rows+1 {graph_median_ms(lambda: sdpa(q, k, v)):.4f} | " + " | ".join(line))
            print(f"  rows {rows}, SDPA with the pad bias: {sdpa_line(q, k, v, 512 - rows, ref)}")
        best = best or min(at128, key=at128.get)
    return best


def forward_ab(cfg, prompt_tokens: int, rounds: int):
    use(cfg)
    c, x, ts, ctx = forward_inputs(prompt_tokens=prompt_tokens)
    model = default_model(c)
    variants = {}
    for label, max_rows, backend in (("all 512 rows (SDPA)", 0, "triton"), (f"collapsed, Triton {cfg}", 256, "triton"),
                                     ("collapsed, SDPA + pad bias", 256, "sdpa")):
        dit.COLLAPSE_MAX_ROWS, ca.BACKEND = max_rows, backend
        graphs = GraphedForward()
        with torch.no_grad():
            out = graphs(model, x, ts, ctx)
        variants[label] = (graphs, out.float())
    outs = [o for _, o in variants.values()]
    for label, o in list(zip(variants, outs))[1:]:
        print(f"\n{label} against all 512 rows: forward output rel. L2 {((o - outs[0]).norm() / outs[0].norm()).item():.2e}")
    times = {k: [] for k in variants}
    with torch.no_grad():
        for _ in range(rounds):
            for label, (graphs, _) in variants.items():
                dit.COLLAPSE_MAX_ROWS, ca.BACKEND = (0, "triton") if label.startswith("all") else \
                    (256, "sdpa" if "SDPA" in label else "triton")
                for _ in range(2):
                    graphs(model, x, ts, ctx)
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(5):
                    graphs(model, x, ts, ctx)
                end.record()
                torch.cuda.synchronize()
                times[label].append(start.elapsed_time(end) / 5)
    for label, t in times.items():
        print(f"{label}: median {statistics.median(t):.2f} ms over {rounds} rounds {[round(v, 1) for v in t]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    cfg = sweep()
    print(f"fastest at 128 rows (1.3B): {cfg}")
    forward_ab(cfg, args.prompt_tokens, args.rounds)


if __name__ == "__main__":
    main()
