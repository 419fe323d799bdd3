"""Where the collapsed-padding forward's difference from the 512-row forward comes from: the 1.3B 480p DiT with a
`--prompt-tokens` prompt, collapse on against off, for bf16 / FP8 and dense / SLA, each with the same weights.

    python bench/experiments/collapse_error.py [--prompt-tokens 40]

bf16 dense is also compared with the float32 dense forward over all 512 rows: if the collapsed forward is no further
from it than the 512-row bf16 forward, their difference is bf16 rounding (amplified through 30 blocks, and more
through FP8's codes and SLA's top-k block choice), not an error of the collapse.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bench_forward import forward_inputs

from turbo_batch.models import dit
from turbo_batch.models.dit_checkpoints import random_dit
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=40)
    args = ap.parse_args()
    cfg, x, ts, ctx = forward_inputs(prompt_tokens=args.prompt_tokens)
    print(torch.cuda.get_device_name(), f"| prompt of {args.prompt_tokens} tokens")
    ref = random_dit(cfg, 0, device="cuda", dtype=torch.float32, on_device=True).eval().requires_grad_(False)
    with torch.no_grad():
        exact = ref(x.float(), ts, ctx.float()).float()  # float32, dense, every row: what both bf16 forwards approximate
    del ref
    for quant in ("none", "fp8"):
        model = random_dit(cfg, 0, device="cuda", dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
        if quant == "fp8":
            quantize_linears_(model, keep=DEFAULT_KEEP_BF16)
        for attention in ("dense", "sla"):
            model.set_attention(attention, 0.1)
            outs = []
            for rows in (0, 256):
                dit.COLLAPSE_MAX_ROWS = rows
                with torch.no_grad():
                    outs.append(model(x, ts, ctx).float())
            off, on = outs
            line = f"{quant:>5} {attention:>6}: collapsed vs 512 rows rel. L2 {((on - off).norm() / off.norm()).item():.2e}"
            if (quant, attention) == ("none", "dense"):
                line += (f"; against the float32 forward: 512 rows {((off - exact).norm() / exact.norm()).item():.2e}, "
                         f"collapsed {((on - exact).norm() / exact.norm()).item():.2e}")
            print(line)
        del model
    dit.COLLAPSE_MAX_ROWS = 0


if __name__ == "__main__":
    main()
