"""Compile an SLA, norm or VAE elementwise Triton kernel for sm_90 on a machine without a GPU and summarise its SASS.

    python bench/experiments/offline_sass.py attention   # the fused kernel, production launch
    python bench/experiments/offline_sass.py stats       # the statistics pass
    python bench/experiments/offline_sass.py layernorm-fp8   # the modulated LayerNorm writing fp8 rows (1.3B)
    python bench/experiments/offline_sass.py layernorm-fp8 --consts '{"HW_ROUND": false, "HW_CVT": 1}'  # former casts
    python bench/experiments/offline_sass.py attention-int8   # the sla_int8 variant (int8 QK^T)
    python bench/experiments/offline_sass.py attention --consts '{"BLOCK_M": 64}' --opts '{"num_warps": 4}'

Prints shared memory, registers, spill stack and the instruction mix of the whole kernel and of its hottest loop
(the longest backward branch), so instruction-level ideas can be checked before spending GPU time. The result is
the installed Triton's: with the device's version (3.6) it reproduces the GPU's 254 registers / 160 KB exactly;
other versions allocate differently. Integer strides and pointers are specialised as 16-divisible, as at runtime.
"""
import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import triton.language as tl

from kernels import cross_attention, norms, sla, vae_elementwise

KERNELS = {  # name: (kernel, constexprs, launch options, pointer dtypes other than bf16)
    "attention": (sla._sla_attention_kernel,
                  dict(D=128, BLOCK_M=128, BLOCK_N=64, USE_TMA=False, GROUP=2, GATHER=False, WITH_LINEAR=True),
                  dict(num_warps=8, num_stages=2),
                  dict(KEPT="*i32", KSUM="*fp32", BIAS="*fp32", PART_O="*fp32", PART_LSE="*fp32")),
    "attention-int8": (sla._sla_attention_kernel,
                       dict(D=128, BLOCK_M=128, BLOCK_N=64, USE_TMA=False, GROUP=2, GATHER=False, WITH_LINEAR=True,
                            QK_INT8=True),
                       dict(num_warps=8, num_stages=2),
                       dict(Q="*i8", K="*i8", KEPT="*i32", KSUM="*fp32", BIAS="*fp32", QS="*fp32", KS="*fp32",
                            PART_O="*fp32", PART_LSE="*fp32")),
    "stats": (sla._sla_stats_kernel, dict(D=128, BLOCK_N=64, RATIO=2, TILE=64, POOL_PRECISION="tf32"),
              dict(num_warps=16, num_stages=3), dict(Q_POOL="*fp32", K_POOL="*fp32", STATS="*fp32")),
    # the norms at the 1.3B width (C = 1536: 4 rows x 6 segments of 256, 4 warps), as the DiT's forward runs them
    "layernorm-fp8": (norms._layernorm_modulate_kernel,
                      dict(ROWS=4, SEG=256, NSEG=6, NORM_DTYPE=tl.bfloat16, OUT_DTYPE=tl.bfloat16, ONE_PLUS=True,
                           FP8=True, HW_CVT=2, HW_ROUND=True, EVEN_C=True),
                      dict(num_warps=4, enable_fp_fusion=False),
                      dict(shift_ptr="*fp32", scale_ptr="*fp32", out_ptr="*fp8e4nv", qscale_ptr="*fp32")),
    "rmsnorm-rope": (norms._rmsnorm_rope_kernel,
                     dict(ROWS=4, SEG=256, NSEG=6, HALF_D=64, NORM_DTYPE=tl.float32, WPROD_DTYPE=tl.bfloat16,
                          OUT_DTYPE=tl.bfloat16, ROPE=True, HW_ROUND=True),
                     dict(num_warps=4, enable_fp_fusion=False),
                     dict(w_ptr="*fp32", cos_ptr="*fp32", sin_ptr="*fp32")),
    # the cross-attention over a collapsed text context (kernels/cross_attention.py)
    "cross-attention": (cross_attention._cross_attention_kernel, dict(HAS_PAD=True, D=128, BLOCK_M=64, BLOCK_N=64),
                        dict(num_warps=4, num_stages=2), dict(S="i32", log2_pad="fp32")),
    # the VAE's elementwise passes at the decoder's full-resolution width (C = 96, kernels/vae_elementwise.py)
    "vae-norm": (vae_elementwise._rms_norm_silu_kernel,
                 dict(SILU=True, HAS_BIAS=True, DTYPE=tl.bfloat16, HW=True, ROWS=32, BLOCK_C=128),
                 dict(num_warps=4, enable_fp_fusion=False), dict(scale="fp32")),
    "vae-norm-seg": (vae_elementwise._rms_norm_silu_segments_kernel,
                     dict(C=96, SEG=32, NSEG=3, ROWS=64, SILU=True, HAS_BIAS=True, FAST_SILU=False, DTYPE=tl.bfloat16,
                          HW=True),
                     dict(num_warps=4, enable_fp_fusion=False), dict(scale="fp32")),
    "vae-bias-residual": (vae_elementwise._bias_residual_kernel,
                          dict(HAS_BIAS=True, DTYPE=tl.bfloat16, HW=True, ROWS=32, BLOCK_C=128),
                          dict(num_warps=4, enable_fp_fusion=False), {}),
}
# 16-divisible at the DiT's widths: the JIT specialises them, so the loads vectorise
ROW_LENGTHS = ("C", "HD")
FLOAT_SCALARS = ("qk_scale", "eps_over_len", "inv_len", "eps")
OPCODE = re.compile(r"^\s+/\*([0-9a-f]+)\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9_.]+)(.*)$")


def compile_sm90(fn, consts, opts, pointer_types):
    consts = {**{p.name: p.default for p in fn.params if p.is_constexpr and p.name not in consts}, **consts}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in pointer_types:
            sig[name] = pointer_types[name]
        elif (name.isupper() or name.endswith("_ptr")) and name not in ("L", "H", *ROW_LENGTHS):
            sig[name] = "*bf16"
        else:
            sig[name] = "fp32" if name in FLOAT_SCALARS else "i32"
    div16 = [n for n in fn.arg_names if sig[n] != "constexpr" and (
        sig[n].startswith("*") or (n.startswith("stride") and n != "stride_ksum") or n in ROW_LENGTHS)]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    return triton.compile(ASTSource(fn, sig, consts, attrs=attrs), target=GPUTarget("cuda", 90, 128),
                          options={"enable_fp_fusion": True, **opts})


def cuobjdump(cubin: bytes, flag: str) -> str:
    tool = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([str(tool), flag, f.name], capture_output=True, text=True, check=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kernel", choices=sorted(KERNELS))
    ap.add_argument("--consts", default="{}", help="JSON constexpr overrides")
    ap.add_argument("--opts", default="{}", help="JSON launch-option overrides (num_warps, num_stages)")
    ap.add_argument("--sass", help="also write the full SASS here")
    args = ap.parse_args()
    fn, consts, opts, ptrs = KERNELS[args.kernel]
    compiled = compile_sm90(fn, {**consts, **json.loads(args.consts)}, {**opts, **json.loads(args.opts)}, ptrs)
    sass = cuobjdump(compiled.asm["cubin"], "-sass")
    usage = cuobjdump(compiled.asm["cubin"], "-res-usage")
    if args.sass:
        Path(args.sass).write_text(sass)
    resources = " ".join(re.findall(r"(?:REG|STACK):\d+", usage))
    print(f"triton {triton.__version__}: shared {compiled.metadata.shared // 1024} KB, {resources}")
    lines = [m.groups() for m in map(OPCODE.match, sass.splitlines()) if m]
    print(f"{len(lines)} instructions: " + mix(op for _, op, _ in lines))
    addr = {int(a, 16): i for i, (a, _, _) in enumerate(lines)}
    loops = []
    for i, (_, op, rest) in enumerate(lines):
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) in addr and addr[int(target.group(1), 16)] < i:
            loops.append((i - addr[int(target.group(1), 16)], addr[int(target.group(1), 16)], i))
    if loops:
        _, start, end = max(loops)
        print(f"hottest loop ({end - start + 1} instructions): " + mix(op for _, op, _ in lines[start : end + 1]))


def mix(ops) -> str:
    return ", ".join(f"{op} {n}" for op, n in Counter(ops).most_common(16))


if __name__ == "__main__":
    main()
