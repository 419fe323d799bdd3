"""The 8-bit SLA kernel (int8 QK^T, fp8 P V: kernels/sla_gluon_8bit.py) against the bf16 Gluon kernel, one run.

    python bench/experiments/sla_8bit_ab.py [--shape 1,32760,12,128] [--rounds 5] [--variants JSON]

Prints the relative errors against the float32 reference (and the int8-QK^T reference, whose only approximation is
the quantized logits) on ragged small shapes and the timed shape, repeat bits, then interleaved medians of the
kernels alone (quantization outside the timing: it runs in torch here) and dense SDPA in the same rounds. The bf16
kernel is timed as one launch (no wave-tail split, like the 8-bit one) and as its default.
"""
import argparse
import functools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
from ab_attention import time_interleaved
from bench_attention import make_inputs

from kernels import sla
from kernels.sla_gluon_8bit import SLA_8BIT, quantize_sla_8bit_reference, sla_sparse_attention_8bit


def rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def check(shape, topk):
    q, k, v, w, b = make_inputs(*shape, seed=3)
    plan = sla.sla_triton_plan(q, k, v, w, b, topk)
    quantized = quantize_sla_8bit_reference(q, k, v)
    out8 = sla_sparse_attention_8bit(q, quantized, *plan)
    again = sla_sparse_attention_8bit(q, quantized, *plan)
    out16 = sla.sla_sparse_attention(q, k, v, *plan, kernel="gluon")
    ref = sla.sla_reference(q.float(), k.float(), v.float(), w, b, topk)
    ref8 = sla.sla_int8_reference(q.float(), k.float(), v.float(), w, b, topk)
    print(f"{shape} top-k {topk}: 8-bit vs fp32 ref {rel(out8, ref):.2e} (vs int8-QK ref {rel(out8, ref8):.2e}); "
          f"bf16 kernel vs fp32 ref {rel(out16, ref):.2e}; finite {bool(out8.isfinite().all())}; "
          f"repeat bits {torch.equal(out8, again)}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="1,32760,12,128")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", default='{"default": {}}',
                    help='JSON {name: SLA_8BIT overrides} of 8-bit settings to time, e.g. {"narrow": {"wide_qk": false}}')
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for shape, topk in (((2, 4133, 4, 128), 0.2), ((1, 1000, 2, 128), 0.07), ((1, 8192, 3, 128), 0.1)):
        check(shape, topk)
    shape = tuple(map(int, args.shape.split(",")))
    check(shape, 0.1)
    q, k, v, w, b = make_inputs(*shape)
    plan = sla.sla_triton_plan(q, k, v, w, b, 0.1)
    quantized = quantize_sla_8bit_reference(q, k, v)
    torch.cuda.synchronize()
    t0 = torch.cuda.Event(enable_timing=True)
    t1 = torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(5):
        quantize_sla_8bit_reference(q, k, v)
    t1.record()
    torch.cuda.synchronize()
    print(f"quantization in torch (reference code, not a kernel): {t0.elapsed_time(t1) / 5:.3f} ms")
    fns = {"bf16 one launch": lambda: sla.sla_sparse_attention(q, k, v, *plan, kernel="gluon", wave_slots=0),
           "bf16 default": lambda: sla.sla_sparse_attention(q, k, v, *plan, kernel="gluon")}
    for name, overrides in json.loads(args.variants).items():
        fns[f"8-bit {name}"] = functools.partial(run_with, overrides, q, quantized, plan)
    time_interleaved(fns, q, k, v, args.rounds)


def run_with(overrides, q, quantized, plan):
    """The 8-bit kernel with SLA_8BIT overridden for this call (each setting compiles its own kernel)."""
    saved = dict(SLA_8BIT)
    SLA_8BIT.update(overrides)
    try:
        return sla_sparse_attention_8bit(q, quantized, *plan)
    finally:
        SLA_8BIT.clear()
        SLA_8BIT.update(saved)


if __name__ == "__main__":
    main()
