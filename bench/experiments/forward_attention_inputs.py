"""The SLA kernel on the q, k, v a DiT forward feeds it, beside bench_attention's synthetic inputs, in one run.

    python bench/experiments/forward_attention_inputs.py [--layers 0,15,29] [--model 1.3b]

Why: in the 1.3B forward the Gluon kernel averaged 0.65 ms a launch, against 0.56 ms on `make_inputs`, and the
intra-warpgroup overlap that saves 14% on synthetic inputs saved nothing there (session 13, H100). This captures
the inputs of a few layers of a real forward (random weights, as bench_forward.py), prints how their kept lists
are spread (distinct k-blocks per head, how many q-blocks share the most popular one), and times the kernel,
overlapped and plain, on each.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bench_attention import make_inputs
from bench_forward import MODELS, default_model, forward_inputs
from triton.testing import do_bench

from kernels import sla, sla_gluon


def spread(kept: torch.Tensor, n_kblocks: int) -> str:
    """kept: (B, H, q-blocks, n_keep). Distinct k-blocks a head touches, and the top block's share of q-blocks."""
    b, h, nq, _ = kept.shape
    counts = torch.zeros(b * h, n_kblocks, device=kept.device, dtype=torch.int64)
    counts.scatter_add_(1, kept.reshape(b * h, -1).long(), torch.ones_like(kept.reshape(b * h, -1), dtype=torch.int64))
    distinct = (counts > 0).sum(1).float()
    return (f"distinct k-blocks per head {distinct.mean():.0f} of {n_kblocks} (min {distinct.min():.0f}); "
            f"the most shared block is kept by {counts.max(1).values.float().mean() / nq:.0%} of q-blocks")


def time_variants(q, k, v, w, b, label: str, rounds: int):
    plan = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    n_kblocks = -(-q.shape[1] // 64)
    times = {True: [], False: []}
    for _ in range(rounds):
        for overlap in times:
            sla_gluon.GLUON_ATTENTION["overlap"] = overlap
            times[overlap].append(do_bench(lambda: sla.sla_sparse_attention(q, k, v, *plan), warmup=10, rep=60,
                                           return_mode="median"))
    sla_gluon.GLUON_ATTENTION["overlap"] = True
    stride = tuple(q.stride())
    print(f"{label}: overlapped {statistics.median(times[True]):.3f} ms, plain {statistics.median(times[False]):.3f} "
          f"ms | q strides {stride} | {spread(plan[0], n_kblocks)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg, x, ts, ctx = forward_inputs(args.model, "480p")
    model = default_model(cfg)
    captured = {}
    layers = [int(i) for i in args.layers.split(",")]
    def capture(i):
        def hook(module, inputs):  # returns None: the inputs go on unchanged
            captured.setdefault(i, [t.clone() for t in inputs])
        return hook

    for i in layers:
        model.blocks[i].self_attn.attn_op.register_forward_pre_hook(capture(i))
    with torch.no_grad():
        model(x, ts, ctx)
    print(torch.cuda.get_device_name(), flush=True)
    time_variants(*make_inputs(1, captured[layers[0]][0].shape[1], cfg.num_heads, 128), "make_inputs", args.rounds)
    for i in layers:
        proj = model.blocks[i].self_attn.attn_op.local_attn.proj_l
        time_variants(*captured[i], proj.weight, proj.bias, f"forward layer {i}", args.rounds)


if __name__ == "__main__":
    main()
