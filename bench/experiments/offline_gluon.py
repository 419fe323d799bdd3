"""Compile a Gluon kernel for sm_90 on a machine without a GPU and summarise its resources.

    PYTHONPATH=/path/to/triton-3.6 python bench/experiments/offline_gluon.py [--epilogue 0|1|2] [--bf16]
    PYTHONPATH=/path/to/triton-3.6 python bench/experiments/offline_gluon.py --sla [--config '{"overlap": false}']
    PYTHONPATH=/path/to/triton-3.6 python bench/experiments/offline_gluon.py --sla8 [--config '{"stages": 4}']

The GEMM (kernels/gemm_gluon.py) by default; --sla compiles SLA's attention kernel (kernels/sla_gluon.py) at the
1.3B 480p shape instead, --sla8 its 8-bit experiment (kernels/sla_gluon_8bit.py).

Arguments are built as the launcher builds them (CPU tensors stand in for device memory), so the signature matches
what the GPU compiles; prints shared memory, registers per partition budget and spill stack, so a kernel that
cannot compile or spills is caught before any GPU time is spent. Use the device's Triton version (3.6): Gluon's API
moves between releases.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.experimental.gluon._runtime import GluonASTSource  # noqa: E402
from triton.runtime.jit import mangle_type  # noqa: E402

from bench.experiments.offline_sass import cuobjdump  # noqa: E402
from kernels import gemm_gluon as gg  # noqa: E402
from kernels import sla_gluon, sla_gluon_8bit  # noqa: E402
from kernels.gluon_tma import descriptor  # noqa: E402
from kernels.fp8_linear import FP8_DTYPE  # noqa: E402


def compile_sm90(fn, args: dict, constexprs: dict, options: dict):
    sig = {name: ("constexpr" if name in constexprs else mangle_type(args[name])) for name in fn.arg_names}
    div16 = [n for n in fn.arg_names if sig[n].startswith("*")]
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in div16}
    src = GluonASTSource(fn, sig, constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def compile_sla(overrides: dict):
    """The attention kernel as `launch_gluon_attention` launches it at 1.3B 480p (one program per q-block)."""
    B, L, H, D, bq, bk = 1, 32760, 12, 128, 128, 64
    cfg = {**sla_gluon.GLUON_ATTENTION, **overrides}
    flat = torch.empty(B * L, H * D, dtype=torch.bfloat16)
    desc = lambda rows: descriptor(flat, [rows, D])  # noqa: E731
    f32, i32 = torch.empty(4, dtype=torch.float32), torch.empty(4, dtype=torch.int32)
    kargs = dict(q_desc=desc(bq), k_desc=desc(bk), v_desc=desc(bk), kvw_desc=desc(D), KEPT=i32,
                 O=torch.empty(4, dtype=torch.bfloat16), KSUM=f32, BIAS=f32, PART_O=f32, PART_LSE=f32,
                 stride_ob=L * H * D, stride_ol=H * D, stride_oh=D, stride_ksum=H * D, L=L, H=H, n_keep=51,
                 qk_scale=0.1, eps_over_len=1e-9, programs_per_head=256, unit0=0, chunk=52)
    consts = dict(D=D, BLOCK_M=bq, BLOCK_N=bk, STAGES=cfg["stages"], PIECES=1, WITH_LINEAR=True,
                  CONSUMER_REGS=cfg["consumer_regs"], OVERLAP=cfg["overlap"])
    return compile_sm90(sla_gluon._sla_attention_gluon_kernel, kargs, consts,
                        dict(num_warps=cfg["num_warps"], enable_fp_fusion=True)), cfg


def compile_sla8(overrides: dict):
    """The 8-bit SLA kernel as `sla_sparse_attention_8bit` launches it at 1.3B 480p."""
    B, L, H, D = 1, 32760, 12, 128
    cfg = sla_gluon_8bit.SLA_8BIT
    saved = dict(cfg)
    cfg.update(overrides)
    try:
        q = torch.empty(B, L, H, D, dtype=torch.bfloat16)
        i8 = torch.empty(B, L, H, D, dtype=torch.int8)
        f32 = torch.empty(B, H, L, dtype=torch.float32)
        vt8 = torch.empty(B, H, D, -(-L // 64) * 64, dtype=torch.float8_e4m3fn)
        quantized = (i8, f32, i8, f32, vt8, f32)
        kept = torch.empty(B, H, 256, 51, dtype=torch.int32)
        _, args, consts = sla_gluon_8bit.kernel_arguments(
            q, quantized, kept, torch.empty(B, H, D, D, dtype=torch.bfloat16), torch.empty(B, H, D), torch.empty(D),
            torch.empty_like(q))
        compiled = compile_sm90(sla_gluon_8bit._sla_attention_8bit_kernel, args, consts,
                                dict(num_warps=cfg["num_warps"], enable_fp_fusion=True))
        return compiled, dict(cfg)
    finally:
        cfg.clear()
        cfg.update(saved)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sla8", action="store_true", help="the 8-bit SLA attention experiment")
    ap.add_argument("--sla", action="store_true", help="the SLA attention kernel instead of the GEMM")
    ap.add_argument("--epilogue", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 operands (the o projections)")
    ap.add_argument("--gate", action="store_true")
    ap.add_argument("--ptx", help="write the PTX here")
    ap.add_argument("--config", default="{}", help="JSON overrides of GLUON_GEMM (BLOCK_M, BLOCK_N, STAGES, ...)")
    args = ap.parse_args()
    if args.sla:
        compiled, cfg = compile_sla(json.loads(args.config))
        return report(compiled, f"sla {cfg}", args.ptx)
    if args.sla8:
        compiled, cfg = compile_sla8(json.loads(args.config))
        return report(compiled, f"sla 8-bit {cfg}", args.ptx)
    M, N, K = 32760, 1536 if args.epilogue != 1 else 8960, 1536
    dt = torch.bfloat16 if args.bf16 else FP8_DTYPE
    cfg = {**gg.GLUON_GEMM, **json.loads(args.config)}
    bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], 64 if args.bf16 else 128
    a, w = torch.empty(M, K, dtype=dt), torch.empty(N, K, dtype=dt)
    out = torch.empty(M, N, dtype=FP8_DTYPE if args.epilogue == 1 else torch.bfloat16)
    f32 = torch.empty(4, dtype=torch.float32)
    kargs = dict(a_desc=descriptor(a, [bm, bk]), b_desc=descriptor(w, [bn, bk]),
                 out_desc=descriptor(out, [bm, bn]), res_desc=descriptor(out, [bm, bn]),
                 a_scale_ptr=f32, b_scale_ptr=f32, bias_ptr=torch.empty(4, dtype=torch.bfloat16),
                 gate_ptr=torch.empty(4, dtype=torch.bfloat16), qs_ptr=f32, M=M, N=N, K=K, L=M)
    consts = dict(GROUP_M=cfg["GROUP_M"], STAGES=cfg["STAGES"], A_SCALE=0 if args.bf16 else 1, HAS_BIAS=True,
                  EPILOGUE=args.epilogue, HAS_GATE=args.gate, CONSUMER_REGS=cfg["consumer_regs"],
                  GELU_MODE=gg.GELU_MODES[cfg["gelu"]])
    compiled = compile_sm90(gg._gemm_gluon_kernel, kargs, consts,
                            dict(num_warps=cfg["num_warps"], enable_fp_fusion=True))
    report(compiled, f"epilogue {args.epilogue} {'bf16' if args.bf16 else 'fp8'}", args.ptx)


def report(compiled, what: str, ptx_path=None):
    usage = cuobjdump(compiled.asm["cubin"], "-res-usage")
    print(f"triton {triton.__version__}: {what}: shared "
          f"{compiled.metadata.shared // 1024} KB, " + " ".join(re.findall(r"(?:REG|STACK):\d+", usage)))
    ptx = compiled.asm["ptx"]
    print("setmaxnreg:", sorted(set(re.findall(r"setmaxnreg\.\w+\.sync\.aligned\.u32\s+(\d+)", ptx))),
          "| local (spill) ld/st in PTX:", len(re.findall(r"\b(?:ld|st)\.local", ptx)))
    if ptx_path:
        Path(ptx_path).write_text(ptx)


if __name__ == "__main__":
    main()
