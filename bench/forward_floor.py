"""How fast the DiT forward could possibly be: its work, counted from the model's own layers, at peak rates.

Why: the issue's target (1.3B 480p FP8 + SLA forward <= 125 ms on an H200) sits close to the sum of what the
forward must do at the rates the target was set from; this script does that sum from the model instead of by hand.

Counted for one forward (batch 1): every block Linear's GEMM, in FP8 or in bf16 as the runtime's keep-set says
(`quantize.fp8_target_names` with `DEFAULT_KEEP_BF16`, so the split follows the code); SLA's kept blocks
(`sla.n_kept_blocks`, QK^T and PV at 128 x 64 blocks) and its linear branch (phi(K)^T V, Q (phi(K)^T V), proj_l);
the cross-attention over the prompt's rows; and the bytes the memory-bound passes move at least once (the three
LayerNorms writing fp8 rows, RMSNorm + RoPE of q and k, the SLA plan's read of q, k, v). Each class at its rate is a
floor no schedule beats without changing the arithmetic; their sum assumes every class at its peak at once, and
none overlapping. Default rates are the H200 anchors in shared/REFERENCE.md section 11 (FP8 row-wise `_scaled_mm`
and bf16 GEMM at the 1.3B FFN shape, SDPA dense attention at the 1.3B layer) and the H200's 4.8 TB/s HBM peak. Rates
depend on the shape (the 14B's larger GEMMs run faster than the 1.3B's): for the 14B pass rates measured at its own
shapes, or read its sum as a rough figure.
CPU only (the model is built on the meta device):

    python bench/forward_floor.py                               # 1.3B 480p 81 frames, top-k 0.1, 512 text rows
    python bench/forward_floor.py --model 14b --res 720p --attn-tflops 556
    python bench/forward_floor.py --text-rows 65                # a short prompt, collapsed (dit.text_rows)
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when a test imports this file

from _shapes import LATENT, MODELS  # noqa: E402
from kernels.sla import n_kept_blocks  # noqa: E402
from turbo_batch.models.dit import DiTConfig  # noqa: E402
from turbo_batch.models.dit_checkpoints import build_dit  # noqa: E402
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, fp8_target_names  # noqa: E402

BLOCK_Q, BLOCK_K = 128, 64  # SLA's block sizes (kernels/sla.py defaults)


def video_tokens(cfg: DiTConfig, res: str, frames: int) -> int:
    h, w = LATENT[res]
    t = 1 + (frames - 1) // 4
    pt, ph, pw = cfg.patch_size
    return (t // pt) * (h // ph) * (w // pw)


def gemm_tflop(cfg: DiTConfig, tokens: int, text_rows: int, keep=DEFAULT_KEEP_BF16) -> dict[str, float]:
    """TFLOP of the block Linears' GEMMs, split by the dtype the runtime gives them. Cross-attention k and v
    project the prompt's rows, everything else the video tokens."""
    model = build_dit(cfg, "meta")
    fp8 = set(fp8_target_names(model, keep=keep))
    out = {"fp8": 0.0, "bf16": 0.0}
    for name, m in model.blocks.named_modules(prefix="blocks"):
        if not hasattr(m, "in_features") or name.endswith("proj_l"):
            continue
        rows = text_rows if name.endswith(("cross_attn.k", "cross_attn.v")) else tokens
        out["fp8" if name in fp8 else "bf16"] += 2 * rows * m.in_features * m.out_features / 1e12
    return out


def attention_tflop(cfg: DiTConfig, tokens: int, text_rows: int, topk: float) -> dict[str, float]:
    """TFLOP of SLA's kept blocks, its linear branch, and the cross-attention, over every layer."""
    heads, d, layers = cfg.num_heads, cfg.head_dim, cfg.num_layers
    q_blocks, k_blocks = math.ceil(tokens / BLOCK_Q), math.ceil(tokens / BLOCK_K)
    kept = q_blocks * n_kept_blocks(topk, k_blocks) * BLOCK_Q * BLOCK_K * d * 4  # QK^T and PV, 2 FLOP a MAC
    linear = 2 * tokens * d * d * 2 + 2 * tokens * d * d  # phi(K)^T V, Q (phi(K)^T V); proj_l per head
    cross = tokens * text_rows * d * 4
    return {name: v * heads * layers / 1e12 for name, v in (("sla kept blocks", kept), ("sla linear branch", linear),
                                                              ("cross-attention", cross))}


def elementwise_gb(cfg: DiTConfig, tokens: int) -> float:
    """GB the memory-bound passes must move once per forward: per block, three LayerNorm + modulation passes (read
    bf16 x, write fp8 rows), RMSNorm + RoPE of q and k (read and write bf16), and the SLA plan's read of q, k, v."""
    row = tokens * cfg.dim
    per_block = 3 * (2 + 1) * row + 2 * (2 + 2) * row + 3 * 2 * row
    return per_block * cfg.num_layers / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), default="1.3b")
    ap.add_argument("--res", choices=sorted(LATENT), default="480p")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--topk", type=float, default=0.1)
    ap.add_argument("--text-rows", type=int, default=512, help="prompt rows the cross-attention reads")
    ap.add_argument("--fp8-tflops", type=float, default=1135.0)
    ap.add_argument("--bf16-tflops", type=float, default=764.0)
    ap.add_argument("--attn-tflops", type=float, default=630.0, help="bf16 attention rate (SDPA dense)")
    ap.add_argument("--hbm-tbs", type=float, default=4.8, help="memory bandwidth, TB/s")
    ap.add_argument("--target-ms", type=float, default=125.0)
    args = ap.parse_args()

    cfg = DiTConfig(**MODELS[args.model])
    tokens = video_tokens(cfg, args.res, args.frames)
    gemms = gemm_tflop(cfg, tokens, args.text_rows)
    attn = attention_tflop(cfg, tokens, args.text_rows, args.topk)
    gb = elementwise_gb(cfg, tokens)
    rows = [("GEMMs in FP8", f"{gemms['fp8']:.1f} TFLOP", gemms["fp8"] / args.fp8_tflops * 1e3),
            ("GEMMs in bf16 (keep-set)", f"{gemms['bf16']:.1f} TFLOP", gemms["bf16"] / args.bf16_tflops * 1e3),
            *[(name, f"{v:.1f} TFLOP", v / args.attn_tflops * 1e3) for name, v in attn.items()],
            ("norms, RoPE, SLA plan reads", f"{gb:.1f} GB", gb / args.hbm_tbs)]
    total = sum(ms for *_, ms in rows)
    print(f"Wan {args.model} {args.res} {args.frames}f = {tokens} tokens, top-k {args.topk}, {args.text_rows} text rows; "
          f"rates: FP8 {args.fp8_tflops:.0f}, bf16 {args.bf16_tflops:.0f}, attention {args.attn_tflops:.0f} TFLOP/s, "
          f"HBM {args.hbm_tbs} TB/s")
    print(f"{'part':32} {'work':>12} {'floor ms':>9}")
    for name, work, ms in rows:
        print(f"{name:32} {work:>12} {ms:9.1f}")
    print(f"{'sum (every part at peak at once)':32} {'':>12} {total:9.1f}   target {args.target_ms:.0f} ms: "
          f"{args.target_ms - total:+.1f} ms left for everything not counted")


if __name__ == "__main__":
    main()
