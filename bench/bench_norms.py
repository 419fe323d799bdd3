"""GPU timing of the fused DiT elementwise kernels (kernels/norms.py) against torch eager and the kernels they replaced.

For each op at the Wan 1.3B shape [1, 32760, 1536] bf16 (480p, 81 frames; `--shapes 1.3b,14b` adds the 14B 720p
shape [1, 75600, 5120]): the median GPU time of one call in ms (10 calls captured in a CUDA graph and replayed:
`_timing.graph_median_ms`, so the host's launch cost is not timed), the achieved bandwidth over the op's ideal
traffic (one read of each input, one write of the output: the same byte count for every implementation, so GB/s
compare directly with an H200's ~4.8 TB/s), and the speedup over torch eager measured in the same run. Rows:
  torch     the op's torch reference (`*_ref`), eager
  old       the kernels as committed at --baseline-rev (one program per token row), when git can show them
  old cfg   the new kernel launched with the old one-row-per-program tiling (`old_launch_config`): no git needed
  new       the default launch (`norm_launch_config`)
  sweep     a few other fixed tilings (ROWS, SEG x NSEG, warps), to re-pick the default from measurements
Checks in the last column: bf16 elements differing from the torch reference (reductions in another order flip
a last bit now and then), bitwise equality where the kernel promises it. Rows print as they are measured; optional
sections are skipped once --budget-s has passed, so a run stays under two minutes.

    PYTHONPATH=$PWD python bench/bench_norms.py [--shapes 1.3b,14b] [--no-sweep] [--iters 100]
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from _timing import graph_median_ms

from kernels import fp8_linear as F8
from kernels import norms as N

SHAPES = {"1.3b": (1, (21, 30, 52), 1536, 12), "14b": (1, (21, 45, 80), 5120, 40)}  # B, latent grid, C, heads
BASELINE_REV = "a82bcef"  # the last commit with the one-row-per-program kernels
DEVICE = "cuda"


def load_old_norms(rev: str):
    """kernels/norms.py as committed at `rev`, imported under another name, or None (no git, unknown rev)."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:kernels/norms.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except Exception as exc:  # noqa: BLE001
        print(f"(no 'old' rows: git show {rev}:kernels/norms.py failed: {type(exc).__name__})")
        return None
    path = Path(tempfile.mkdtemp()) / "norms_old.py"  # Triton reads the kernels' source from the file
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("norms_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["norms_old"] = mod
    spec.loader.exec_module(mod)
    return mod


class Bench:
    """Times callables and prints one row each, relative to the op's torch row."""

    def __init__(self, iters: int, budget_s: float):
        self.iters, self.budget_s, self.t0 = iters, budget_s, time.time()
        self.torch_ms = 0.0
        self.ms: dict[tuple[str, str], float] = {}

    def over_budget(self, what: str) -> bool:
        if time.time() - self.t0 < self.budget_s:
            return False
        print(f"  (skipped {what}: past the {self.budget_s:.0f} s budget)", flush=True)
        return True

    def time(self, fn) -> float:
        return graph_median_ms(fn, calls=10, reps=max(3, self.iters // 10))

    def row(self, op: str, impl: str, fn, nbytes: int, note: str = "") -> float:
        ms = self.time(fn)
        if impl == "torch":
            self.torch_ms = ms
        self.ms[op, impl] = ms
        print(f"  {op:26s} {impl:24s} {ms:8.3f} {nbytes / ms / 1e6:7.0f} {self.torch_ms / ms:7.2f}x  {note}",
              flush=True)
        return ms


def differing(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{(a != b).float().mean().item():.2%} differ from torch"


def same_bits(a, b) -> bool:
    if isinstance(a, tuple):
        return all(same_bits(u, v) for u, v in zip(a, b))
    return bool(torch.equal(a.view(torch.uint8), b.view(torch.uint8)))


def cfg_name(cfg: dict) -> str:
    return f"R{cfg['ROWS']} {cfg['SEG']}x{cfg['NSEG']} w{cfg['num_warps']}"


def sweep_configs(C: int) -> list[dict]:
    """Fixed alternatives to the default tiling (bf16 rows of C): more warps per program, two rows per warp, a row
    over several warps (cross-warp sums)."""
    d = N.norm_launch_config(C)
    rows, seg, nseg, w = d["ROWS"], d["SEG"], d["NSEG"], d["num_warps"]
    alts = [
        {"ROWS": rows * 2, "SEG": seg, "NSEG": nseg, "num_warps": w * 2},  # same per warp, bigger programs
        {"ROWS": rows * 2, "SEG": seg, "NSEG": nseg, "num_warps": w},  # two rows per warp
        {"ROWS": rows * 4, "SEG": seg, "NSEG": nseg, "num_warps": w * 2},  # two rows per warp, 8 warps
    ]
    if nseg % 2 == 0:
        alts.append({"ROWS": max(1, rows // 2), "SEG": seg * 2, "NSEG": nseg // 2, "num_warps": w})  # 2 warps/row
    return alts


def run_shape(name: str, bench: Bench, old, sweep: bool) -> None:
    B, grid, C, H = SHAPES[name]
    L = grid[0] * grid[1] * grid[2]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = (torch.randn(B, L, C, device=DEVICE, generator=g) * 2 + 0.5).bfloat16()
    y = torch.randn(B, L, C, device=DEVICE, generator=g).bfloat16()
    shift, scale, gate = (0.1 * torch.randn(B, 1, C, device=DEVICE, generator=g) for _ in range(3))
    weight = (1 + 0.1 * torch.randn(C, device=DEVICE, generator=g)).bfloat16()  # the DiT's bf16 q/k norm weights
    bias = 0.1 * torch.randn(C, device=DEVICE, generator=g)
    cos, sin = N.rope_cos_sin(*grid, C // H, device=DEVICE)
    n = x.numel()
    rw = 4 * n  # bf16 read + bf16 write
    tables = 2 * cos.numel() * 4
    new_cfg = cfg_name(N.norm_launch_config(C))
    old_cfg = N.old_launch_config(C)
    print(f"\n[{B}, {L}, {C}] bf16 ({name}); columns: op, implementation, ms, GB/s of the op's ideal traffic, "
          f"speedup over torch eager, check", flush=True)

    def op(label, nbytes, ref, new, old_fn=None, old_cfg_fn=None, check=None, sweep_fn=None):
        want = ref()
        bench.row(label, "torch", ref, nbytes)
        if old_fn is not None:
            bench.row(label, f"old {BASELINE_REV}", old_fn, nbytes)
        if old_cfg_fn is not None:
            bench.row(label, "old cfg " + cfg_name(old_cfg), old_cfg_fn, nbytes)
        bench.row(label, "new " + new_cfg, new, nbytes, check(new(), want) if check else "")
        if sweep and sweep_fn is not None and not bench.over_budget(f"the {label} sweep"):
            for cfg in sweep_configs(C):
                bench.row(label, "sweep " + cfg_name(cfg), lambda c=cfg: sweep_fn(c), nbytes,
                          check(sweep_fn(cfg), want) if check else "")
        del want

    op("layernorm_modulate", rw, lambda: N.layernorm_modulate_ref(x, shift, scale),
       lambda: N.layernorm_modulate(x, shift, scale),
       old and (lambda: old.layernorm_modulate_triton(x, shift, scale)),
       lambda: N.layernorm_modulate_triton(x, shift, scale, config=old_cfg), differing,
       lambda c: N.layernorm_modulate_triton(x, shift, scale, config=c))
    op("layernorm_affine", rw, lambda: N.layernorm_affine_ref(x, weight, bias),
       lambda: N.layernorm_affine(x, weight, bias),
       old and (lambda: old.layernorm_affine_triton(x, weight, bias)),
       lambda: N.layernorm_affine_triton(x, weight, bias, config=old_cfg), differing)
    op("rmsnorm_rope", rw + tables, lambda: N.rmsnorm_rope_ref(x, weight, cos, sin, H, weight_in_fp32=True),
       lambda: N.rmsnorm_rope(x, weight, cos, sin, H, weight_in_fp32=True),
       old and (lambda: old.rmsnorm_rope_triton(x, weight, cos, sin, H, weight_in_fp32=True)),
       lambda: N.rmsnorm_rope_triton(x, weight, cos, sin, H, weight_in_fp32=True, config=old_cfg), differing,
       lambda c: N.rmsnorm_rope_triton(x, weight, cos, sin, H, weight_in_fp32=True, config=c))
    op("rmsnorm", rw, lambda: N.rmsnorm_ref(x, weight, weight_in_fp32=True),
       lambda: N.rmsnorm(x, weight, weight_in_fp32=True),
       old and (lambda: old.rmsnorm_triton(x, weight, weight_in_fp32=True)),
       lambda: N.rmsnorm_triton(x, weight, weight_in_fp32=True, config=old_cfg), differing)
    gate16 = gate.bfloat16()  # TurboDiffusion: bf16 stream, gate.type_as(x)
    op("gated_residual", 6 * n, lambda: N.gated_residual_ref(x, y, gate16), lambda: N.gated_residual(x, y, gate16),
       old and (lambda: old.gated_residual_triton(x, y, gate16)), None,
       lambda a, b: f"bitwise the torch op: {same_bits(a, b)}",
       lambda c: N.gated_residual_triton(x, y, gate16, config=c))
    if torch.cuda.get_device_capability() >= (8, 9):
        fp8_rows(bench, x, shift, scale, old, sweep, C)


def fp8_rows(bench: Bench, x, shift, scale, old, sweep: bool, C: int) -> None:
    """The fused LayerNorm-modulate -> per-token fp8 kernel against the two kernels it replaces (same bits)."""
    label = "layernorm_modulate -> fp8"
    nbytes = 3 * x.numel() + 4 * x.shape[0] * x.shape[1]  # bf16 read, e4m3 write, fp32 scale per row

    def composed(ln):
        return lambda: F8.quantize_per_token_fp8(ln(x, shift, scale).reshape(-1, C))

    want = composed(N.layernorm_modulate)()
    bench.row(label, "torch", lambda: N.layernorm_modulate_fp8_ref(x, shift, scale), nbytes)
    if old is not None:
        bench.row(label, "old LN + quant", composed(old.layernorm_modulate_triton), nbytes)
    bench.row(label, "new LN + quant", composed(N.layernorm_modulate), nbytes)
    fused = lambda: N.layernorm_modulate_fp8(x, shift, scale)
    bench.row(label, "new fused " + cfg_name(N.norm_launch_config(C)), fused, nbytes,
              f"bitwise LN + quant: {same_bits(fused(), want)}")
    try:  # the casts before session 15: bf16 rounding by integer ops, a clamp before the saturating e4m3 cast
        N.HW_ROUNDING = F8.SATURATING_CAST = False
        bench.row(label, "fused, integer rounding", fused, nbytes, f"bitwise LN + quant: {same_bits(fused(), want)}")
    finally:
        N.HW_ROUNDING = F8.SATURATING_CAST = True
    if sweep and not bench.over_budget("the fp8 sweep"):
        for cfg in sweep_configs(C):  # a config is only eligible if its fused variant keeps the plain kernel's bits
            run = lambda c=cfg: N.layernorm_modulate_fp8_triton(x, shift, scale, config=c)
            same = same_bits(run(), composed(lambda *a, c=cfg: N.layernorm_modulate_triton(*a, config=c))())
            bench.row(label, "sweep " + cfg_name(cfg), run, nbytes, f"bitwise LN (same cfg) + quant: {same}")


def per_forward(bench: Bench) -> None:
    """The norm kernels' share of a 1.3B forward (30 blocks): 2 modulated LNs, 1 affine LN, 2 q/k RMSNorm+RoPE,
    1 cross-attention q RMSNorm and 2 gated residuals per block (the cross k norm, on 512 text tokens, left out)."""
    calls = {"layernorm_modulate": 60, "layernorm_affine": 30, "rmsnorm_rope": 60, "rmsnorm": 30,
             "gated_residual": 60}
    def first(op: str, impl: str) -> float | None:
        return next((ms for (op_, im), ms in bench.ms.items() if op_ == op and im.startswith(impl)), None)

    print("\nper 1.3B forward (30 blocks), ms:", flush=True)
    for impl in (f"old {BASELINE_REV}", "new"):
        picked = {o: first(o, impl) for o in calls}
        if None not in picked.values():
            parts = ", ".join(f"{o} {calls[o] * ms:.2f}" for o, ms in picked.items())
            print(f"  {impl}: {sum(calls[o] * ms for o, ms in picked.items()):.2f} ({parts})", flush=True)
    fp8 = "layernorm_modulate -> fp8"
    if first(fp8, "new fused") is not None:  # FP8 q/k/v and FFN (the default model): both modulated LNs quantize
        print(f"  FP8 blocks, the 60 modulated LNs + their quantization: LN + quant {60 * first(fp8, 'new LN'):.2f}, "
              f"fused {60 * first(fp8, 'new fused'):.2f}" + (f", old LN + quant {60 * first(fp8, 'old'):.2f}"
                                                             if first(fp8, "old") is not None else ""), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1.3b", help="comma-separated: 1.3b, 14b")
    ap.add_argument("--iters", type=int, default=100, help="timed calls per row: iters / 10 replays of a graph of 10 calls (the median is reported)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the alternative tilings")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the 'old' kernels")
    ap.add_argument("--budget-s", type=float, default=90.0, help="skip optional sections after this many seconds")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_norms.py needs a CUDA GPU")
    import triton

    print(f"{torch.cuda.get_device_name()} (sm{''.join(map(str, torch.cuda.get_device_capability()))}), "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)
    bench = Bench(args.iters, args.budget_s)
    old = load_old_norms(args.baseline_rev)
    with torch.no_grad():
        for i, name in enumerate(args.shapes.split(",")):
            if i and bench.over_budget(f"shape {name}"):
                continue
            run_shape(name, bench, old, sweep=not args.no_sweep and name == "1.3b")
            torch.cuda.empty_cache()
            if name == "1.3b":
                per_forward(bench)
                bench.ms.clear()
    print(f"\ndone in {time.time() - bench.t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
