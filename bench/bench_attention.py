"""SLA attention on one GPU: dense SDPA vs SLA (Gluon on sm_90, else Triton) vs FlexAttention over the same kept blocks.

    python bench/bench_attention.py                       # both Wan shapes, topk 0.1
    python bench/bench_attention.py --topk 0.1 0.15 --shapes 1.3b --no-flex

Rows per shape (median ms of triton.testing.do_bench; random bf16 inputs in (B, L, H, D)):
  sdpa-flash / sdpa-default  dense attention on BHLD-contiguous copies (the speedup baseline is the faster one)
  sla                        the full op `sla_triton` (statistics pass + routing + fused kernel)
  plan                       everything before the fused kernel (statistics pass, routing, kvw)
  kernel[default]            the fused kernel alone as `sla_triton` runs it (the Gluon kernel on sm_90)
  kernel[triton ...]         the Triton fused kernel alone, per variant (tma/ptr loads, 1 or 2 k-blocks per step)
  sparse-only                the default kernel variant without the linear epilogue (what Flex computes)
  flex                       compiled FlexAttention with a BlockMask built from the same kept blocks (128 x 64)
TFLOP/s counts kept blocks only: 4 * B * H * n_qblocks * n_keep * 128 * 64 * D.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels import sla  # noqa: E402

SHAPES = {"1.3b": ("wan2.1-1.3b-480p", (1, 32760, 12, 128)), "14b": ("wan-14b-720p", (1, 75600, 40, 128))}
BLOCK_Q, BLOCK_K = 128, 64


def make_inputs(B, L, H, D, seed=0):
    """bf16 q, k, v with slowly varying (block-level) structure plus noise, and a random proj_l."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    slow = torch.randn(B, L // 96 + 1, H, D, generator=g, device="cuda").repeat_interleave(96, dim=1)[:, :L]
    q = (torch.randn(B, L, H, D, generator=g, device="cuda") + slow).bfloat16()
    k = (torch.randn(B, L, H, D, generator=g, device="cuda") + 0.5 * slow).bfloat16()
    v = torch.randn(B, L, H, D, generator=g, device="cuda").bfloat16()
    weight = torch.randn(D, D, generator=g, device="cuda") / math.sqrt(D)
    bias = 0.1 * torch.randn(D, generator=g, device="cuda")
    return q, k, v, weight, bias


def bench_ms(fn) -> float:
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def try_bench(fn):
    """(ms, None) or (None, reason): one failing baseline must not hide the others."""
    try:
        fn()
        torch.cuda.synchronize()
        return bench_ms(fn), None
    except Exception as exc:  # noqa: BLE001 - reported in the table
        torch.cuda.synchronize()
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:90] if str(exc) else ''}"


def dense_rows(q, k, v):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(qb, kb, vb)

    rows = {"sdpa-flash": try_bench(flash), "sdpa-default": try_bench(lambda: F.scaled_dot_product_attention(qb, kb, vb))}
    del qb, kb, vb
    return rows


def flex_fn(q, k, v, kept, block_options=True):
    """Compiled FlexAttention over the kept blocks at our 128 x 64 granularity (on BHLD copies).

    The kept blocks are passed as FULL blocks (the kernel skips mask_mod on them); the mask_mod states the same
    block pattern per element, which is what defines the result (and what eager flex_attention evaluates).
    """
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    B, L, H, D = q.shape
    nq, nk, n_keep = kept.shape[2], -(-L // BLOCK_K), kept.shape[-1]
    kv_indices = torch.zeros(B, H, nq, nk, dtype=torch.int32, device=q.device)
    kv_indices[..., :n_keep] = kept
    full_blocks = torch.full((B, H, nq), n_keep, dtype=torch.int32, device=q.device)
    allowed = torch.zeros(B, H, nq, nk, dtype=torch.bool, device=q.device).scatter_(-1, kept.long(), True)

    def kept_blocks_only(b, h, q_idx, kv_idx):
        return allowed[b, h, q_idx // BLOCK_Q, kv_idx // BLOCK_K]

    args = (torch.zeros_like(full_blocks), torch.zeros_like(kv_indices), full_blocks, kv_indices)
    try:
        mask = BlockMask.from_kv_blocks(*args, BLOCK_SIZE=(BLOCK_Q, BLOCK_K), mask_mod=kept_blocks_only,
                                        seq_lengths=(L, L))
    except TypeError:  # older torch: no seq_lengths argument
        mask = BlockMask.from_kv_blocks(*args, BLOCK_SIZE=(BLOCK_Q, BLOCK_K), mask_mod=kept_blocks_only)
    compiled = torch.compile(flex_attention, dynamic=False)
    qb, kb, vb = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    options = {"BLOCK_M": BLOCK_Q, "BLOCK_N": BLOCK_K} if block_options else None
    return lambda: compiled(qb, kb, vb, block_mask=mask, kernel_options=options)


def relative_error(out, ref):
    return float((out.float() - ref.float()).norm() / ref.float().norm())


def run_shape(name, shape, topks, with_flex, table, notes):
    B, L, H, D = shape
    q, k, v, weight, bias = make_inputs(*shape)
    dense = dense_rows(q, k, v)
    base_ms = min((ms for ms, _ in dense.values() if ms is not None), default=None)
    nq = -(-L // BLOCK_Q)

    def add(topk, what, result, n_keep=None):
        ms, err = result
        if ms is None:
            table.append((name, topk, what, None, None, None, err))
            return
        pairs = L * L if n_keep is None else nq * n_keep * BLOCK_Q * BLOCK_K  # dense: every (query, key) pair
        tflops = 4 * B * H * pairs * D / (ms * 1e-3) / 1e12
        table.append((name, topk, what, ms, tflops, base_ms / ms if base_ms else None, ""))

    for what, result in dense.items():
        add("-", what, result)

    for i, topk in enumerate(topks):
        kept, kvw, k_sum, bias32 = sla.sla_triton_plan(q, k, v, weight, bias, topk)
        n_keep = kept.shape[-1]
        if i == 0:
            ref = sla.sla_reference(q.float(), k.float(), v.float(), weight, bias, topk)  # float32 throughout
            out = sla.sla_triton(q, k, v, weight, bias, topk)
            again = sla.sla_triton(q, k, v, weight, bias, topk)
            notes.append(f"{name} topk {topk}: rel. error vs sla_reference {relative_error(out, ref):.2e}, "
                         f"bitwise repeat {torch.equal(out, again)}, kept {n_keep}/{-(-L // BLOCK_K)} k-blocks")
            del ref, out, again
        add(topk, "sla", try_bench(lambda: sla.sla_triton(q, k, v, weight, bias, topk)), n_keep)
        add(topk, "plan", try_bench(lambda: sla.sla_triton_plan(q, k, v, weight, bias, topk)), n_keep)
        hopper = torch.cuda.get_device_capability()[0] >= 9
        # the device default: the Gluon kernel on sm_90 (kernels/sla_gluon.py), else the Triton kernel
        add(topk, "kernel[default]", try_bench(lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, k_sum, bias32)),
            n_keep)
        for use_tma in (True, False) if hopper else (False,):
            for pairs in (True, False):
                label = f"kernel[triton {'tma' if use_tma else 'ptr'},{'pairs' if pairs else 'single'}]"
                run = lambda t=use_tma, p=pairs: sla.sla_sparse_attention(q, k, v, kept, kvw, k_sum, bias32,
                                                                          use_tma=t, pairs=p)
                add(topk, label, try_bench(run), n_keep)
        sparse_only = lambda: sla.sla_sparse_attention(q, k, v, kept)
        add(topk, "sparse-only", try_bench(sparse_only), n_keep)
        if with_flex:
            for block_options, label in ((True, "flex"), (False, "flex[default tiles]")):
                try:
                    fn = flex_fn(q, k, v, kept, block_options)
                    result = try_bench(fn)
                    if i == 0 and result[0] is not None:
                        diff = relative_error(fn().transpose(1, 2), sparse_only())
                        notes.append(f"{name} topk {topk}: {label} vs sparse-only kernel rel. diff {diff:.2e}")
                except Exception as exc:  # noqa: BLE001
                    result = (None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}")
                add(topk, label, result, n_keep)
                if result[0] is not None:
                    break  # 128 x 64 tiles worked; the fallback is only for torch builds that refuse them
        torch.cuda.empty_cache()
    del q, k, v
    torch.cuda.empty_cache()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topk", type=float, nargs="+", default=[0.1])
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--no-flex", action="store_true", help="skip the FlexAttention baseline (saves compile time)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_attention.py needs a CUDA GPU")
    started = time.time()
    print(f"device {torch.cuda.get_device_name()} | torch {torch.__version__} | triton {triton.__version__} | "
          f"defaults: USE_TMA_ON_HOPPER={sla.USE_TMA_ON_HOPPER} PAIR_KV_BLOCKS={sla.PAIR_KV_BLOCKS}", flush=True)
    table, notes = [], []
    for key in args.shapes:
        name, shape = SHAPES[key]
        run_shape(name, shape, args.topk, not args.no_flex, table, notes)
        print(f"[{name} done at {time.time() - started:.0f} s]", flush=True)

    print(f"\n{'shape':18s} {'topk':>5s} {'what':24s} {'ms':>9s} {'TFLOP/s':>8s} {'x dense':>8s}")
    for name, topk, what, ms, tflops, speedup, err in table:
        if ms is None:
            print(f"{name:18s} {str(topk):>5s} {what:24s} {'n/a':>9s}   {err}")
            continue
        tf = f"{tflops:8.0f}" if tflops is not None else f"{'':8s}"
        sp = f"{speedup:8.2f}" if speedup is not None else f"{'':8s}"
        print(f"{name:18s} {str(topk):>5s} {what:24s} {ms:9.3f} {tf} {sp}")
    print()
    for note in notes:
        print(note)
    print(f"total {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
