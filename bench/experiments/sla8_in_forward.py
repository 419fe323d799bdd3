"""Would the 8-bit SLA kernel pay inside the 1.3B forward, where the board runs at its power cap?

    python bench/experiments/sla8_in_forward.py [--rounds 6]

Alone, the 8-bit kernel (`kernels/sla_gluon_8bit.py`) is only ~4% faster than the bf16 one, but both run at the
700 W cap there; inside the forward a kernel that spends less energy also leaves more of the power budget to the
kernels around it (the converse was measured: a denser SLA kernel gained 10-14% alone and 1-2% in the forward).
Fast quantizers for it do not exist yet, so this bounds what wiring it in could gain:

* timing: the default FP8 + SLA forward against the same forward whose SLA kernels are the 8-bit kernel fed with
  quantized tensors prepared once (free quantization: the bits are wrong, the work is the same; the plan still
  runs on the real q, k, v), both replayed from CUDA graphs, interleaved over `--rounds` rounds;
* accuracy: the forward with the 8-bit kernel on properly quantized inputs (`quantize_sla_8bit_reference`, torch
  operations), against the bf16 model with the same SLA, beside the default FP8 + SLA model's error.
"""
import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
from bench_forward import forward_inputs

from kernels import sla
from kernels.sla_gluon_8bit import quantize_sla_8bit_reference, sla_sparse_attention_8bit
from turbo_batch.models import dit
from turbo_batch.models.cuda_graph import GraphedForward
from turbo_batch.models.dit_checkpoints import random_dit
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def eight_bit_forward(static=None):
    """A SelfAttentionOp.forward running the 8-bit kernel: on `static` quantized tensors if given, else on the
    reference quantization of this call's q, k, v."""
    def forward(self, q, k, v):
        q, k, v = (sla._as_kernel_input(x) for x in (q, k, v))
        proj = self.local_attn.proj_l
        plan = sla.sla_triton_plan(q, k, v, proj.weight, proj.bias, self.topk)
        quantized = static if static is not None else quantize_sla_8bit_reference(q, k, v)
        return sla_sparse_attention_8bit(q, quantized, *plan)
    return forward


def timed_ms(fn, n=5):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg, x, ts, ctx = forward_inputs()
    model = random_dit(cfg, 0, device="cuda", dtype=torch.bfloat16, on_device=True).eval().requires_grad_(False)
    model.set_attention("sla", 0.1)
    with torch.no_grad():
        ref = model(x, ts, ctx)
        quantize_linears_(model, keep=DEFAULT_KEEP_BF16)
        default = model(x, ts, ctx)
        original = dit.SelfAttentionOp.forward
        dit.SelfAttentionOp.forward = eight_bit_forward()
        quantized_attention = model(x, ts, ctx)
        dit.SelfAttentionOp.forward = original
    print(f"{torch.cuda.get_device_name()} | output rel. L2 error against the bf16 model with the same SLA:")
    print(f"  FP8 linears + bf16 SLA kernel (the default) {rel(default, ref):.4e}")
    print(f"  FP8 linears + 8-bit SLA kernel             {rel(quantized_attention, ref):.4e}")

    B, L, H, D = 1, x.shape[2] * x.shape[3] * x.shape[4] // 4, cfg.num_heads, cfg.dim // cfg.num_heads
    q, k, v = (torch.randn(B, L, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    static = quantize_sla_8bit_reference(q, k, v)
    del q, k, v
    graphs = {"bf16 SLA kernel (default)": GraphedForward(), "8-bit SLA kernel, free quantization": GraphedForward()}
    forwards = {"bf16 SLA kernel (default)": original,
                "8-bit SLA kernel, free quantization": eight_bit_forward(static)}
    times = {name: [] for name in graphs}
    for r in range(args.rounds + 1):
        for name, graph in graphs.items():
            dit.SelfAttentionOp.forward = forwards[name]
            t = timed_ms(lambda: graph(model, x, ts, ctx))
            if r:  # round 0 captures and warms up
                times[name].append(t)
    dit.SelfAttentionOp.forward = original
    print(f"graph-replayed forward, {args.rounds} interleaved rounds of 5 (ms, median [min-max]):")
    for name, ms in times.items():
        print(f"  {name:<38} {statistics.median(ms):8.2f} [{min(ms):.2f}-{max(ms):.2f}]")


if __name__ == "__main__":
    main()
