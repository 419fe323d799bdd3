"""Where the SLA plan's time goes (statistics pass, finalize, routing) and candidate replacements, on one GPU.

    python bench/experiments/plan_variants.py            # GPU, 1.3B 480p shape (1x32760x12x128), top-k 0.1
    TRITON_INTERPRET=1 python bench/experiments/plan_variants.py   # CPU: correctness of the fused routing only

* Statistics-pass probes: the production pass with parts switched off or changed, and loads only (its bandwidth
  floor with this launch).
* Routing: the score matmul + top-k select of production against one fused kernel (`sla_route` below).
* The attention kernel's last partial wave: the kernel over 253 q-blocks (23 full waves of 132) vs all 256.

Measured on an H200 (torch 2.11, Triton 3.6), ms; the SLA full op took 1.812 and SDPA 11.5:
  plan 0.278 = statistics + finalize 0.208 (statistics alone 0.189) + score matmul 0.018 + select 0.042.
  Statistics probes: loads only 0.086 (the HBM floor is 0.063); without the phi(k) softmax 0.112, without
  pooling 0.153, without the phi(k)^T v MMA 0.147, pooling only 0.130; the MMA as v^T phi (no register transpose)
  0.187; sum phi(k) as an elementwise running sum instead of a selector MMA 0.183; phi without the row max (unsafe,
  timing only) 0.172. The softmax over the head dim is the largest part and has no cheap safe replacement.
  Select: one row and one warp per program 0.021 (now the default), 8 rows x 4 warps (the old default) 0.042.
  Fused routing (scores in registers, then the same selection): 0.13-0.32, slower than matmul + select 0.060,
  because the 16-row score tile must live in one program: kept here as a negative result.
  Attention kernel: 253 q-blocks 1.486, all 256 1.554: the last 36 of 3072 units cost a whole wave. Running them
  as a second launch of 64-row programs (tried in this session, then removed) gained only 0.5% at 1.3B (median of
  6 interleaved runs: 1.551 vs 1.559 ms) and nothing at 14B 720p (26.385 vs 26.388 ms): a 64-row program with one
  warpgroup takes most of a 128-row program's time.
  Split-K of the tail (session 4, H200, bench/experiments/ab_attention.py against the unchanged kernel, medians of
  5 interleaved rounds): the last 3 q-blocks of every head as 3 slices of 18 kept blocks each, run first as their
  own launch (108 programs), then the other 253 q-blocks (23 full waves), then a fixed-order merge kernel:
  1.538 ms vs 1.541, no gain (14B 720p: 25.83 vs 25.70). Folding the slices into the main launch (one 1D grid,
  runtime slice bounds) was worse: 1.616 ms, and the 1D grid alone 1.561: the kernel sits at 251 registers, and
  anything that lengthens its live ranges costs more than the tail wave. Both removed again.
"""
import math
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import torch
import triton
import triton.language as tl

from kernels import sla

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERP else "cuda"
DT = torch.float32 if INTERP else torch.bfloat16


@triton.jit
def _stats_probe_kernel(
    Q, K, V, Q_POOL, K_POOL, STATS, SINK,
    stride_ql, stride_qh, stride_kl, stride_kh, stride_vl, stride_vh,
    L, n_qblocks, n_kblocks, tiles_per_chunk, inv_len,
    D: tl.constexpr, BLOCK_N: tl.constexpr, TILE: tl.constexpr,
    DO_POOL: tl.constexpr, DO_PHI: tl.constexpr, DO_KV: tl.constexpr, KV_T: tl.constexpr,
    PHI_EW_SUM: tl.constexpr = False, PHI_NO_MAX: tl.constexpr = False,
):
    """The production statistics pass (B = 1, TILE = 64, block_q = 128) with switchable parts."""
    SEL: tl.constexpr = 16
    chunk = tl.program_id(0)
    h = tl.program_id(1)
    n_chunks = tl.num_programs(0)
    offs_t = tl.arange(0, TILE)
    offs_d = tl.arange(0, D)
    offs_s = tl.arange(0, SEL)
    q_tile = Q + h * stride_qh + offs_t[:, None] * stride_ql + offs_d[None, :]
    k_tile = K + h * stride_kh + offs_t[:, None] * stride_kl + offs_d[None, :]
    v_tile = V + h * stride_vh + offs_t[:, None] * stride_vl + offs_d[None, :]
    q_pool = Q_POOL + h.to(tl.int64) * n_qblocks * D + offs_d[None, :]
    k_pool = K_POOL + h.to(tl.int64) * n_kblocks * D + offs_d[None, :]
    dtype = K.dtype.element_ty
    sel_k = (offs_s[:, None] == offs_t[None, :] // BLOCK_N).to(dtype)
    sel_q = ((offs_s[:, None] == 0) & (offs_t[None, :] >= 0)).to(dtype)
    kv = tl.zeros([D, D], dtype=tl.float32)
    phi_k_sums = tl.zeros([SEL, D], dtype=tl.float32)
    k_sums = tl.zeros([SEL, D], dtype=tl.float32)
    q_run = tl.zeros([SEL, D], dtype=tl.float32)
    sink = tl.zeros([TILE, D], dtype=tl.float32)
    phi_acc = tl.zeros([TILE, D], dtype=tl.float32)
    for i in range(0, tiles_per_chunk):
        tile = chunk * tiles_per_chunk + i
        start = tile * TILE
        real = (start + offs_t) < L
        q = tl.load(q_tile + start.to(tl.int64) * stride_ql, mask=real[:, None], other=0.0)
        k = tl.load(k_tile + start.to(tl.int64) * stride_kl, mask=real[:, None], other=0.0)
        v = tl.load(v_tile + start.to(tl.int64) * stride_vl, mask=real[:, None], other=0.0)
        if DO_POOL:
            k_block_sums = tl.dot(sel_k, k, input_precision="tf32")
            k_sums += k_block_sums
            kblk = tile + offs_s
            tl.store(k_pool + kblk[:, None] * D, k_block_sums * (1.0 / BLOCK_N),
                     mask=((offs_s < 1) & (kblk < n_kblocks))[:, None])
            q_run = tl.dot(sel_q, q, q_run, input_precision="tf32")
            ends_q_block = (i % 2) == 1
            qblk = tile // 2 + offs_s
            tl.store(q_pool + qblk[:, None] * D, q_run * (1.0 / (2 * BLOCK_N)),
                     mask=((offs_s < 1) & (qblk < n_qblocks) & ends_q_block)[:, None])
            q_run = tl.where(ends_q_block, 0.0, q_run)
        else:
            sink = tl.maximum(sink, q.to(tl.float32))
        if DO_PHI:
            kf = k.to(tl.float32)
            if PHI_NO_MAX:  # timing probe only: overflows for rows with entries above ~88
                e = tl.math.exp2(kf * 1.4426950408889634)
            else:
                e = tl.math.exp2((kf - tl.max(kf, axis=1)[:, None]) * 1.4426950408889634)
            phi32 = tl.where(real[:, None], e * (1.0 / tl.sum(e, axis=1))[:, None], 0.0)
            phi = phi32.to(v.dtype)
            if PHI_EW_SUM:  # elementwise running sum, one reduction over tokens per chunk
                phi_acc += phi32
            else:
                phi_k_sums = tl.dot(sel_k, phi, phi_k_sums, input_precision="tf32")
        else:
            phi = k
        if DO_KV:
            if KV_T:
                kv = tl.dot(tl.trans(v), phi, kv, input_precision="tf32")
            else:
                kv = tl.dot(tl.trans(phi), v, kv, input_precision="tf32")
        else:
            sink = tl.maximum(sink, phi.to(tl.float32) + v.to(tl.float32))
    stats = STATS + (h.to(tl.int64) * n_chunks + chunk) * (D * D + 2 * D)
    tl.store(stats + offs_d[:, None] * D + offs_d[None, :], kv * inv_len)
    if PHI_EW_SUM:
        tl.store(stats + D * D + offs_d, tl.sum(phi_acc, axis=0) * inv_len)
    else:
        tl.store(stats + D * D + offs_d, tl.sum(phi_k_sums, axis=0) * inv_len)
    tl.store(stats + D * D + D + offs_d, tl.sum(k_sums, axis=0) * inv_len)
    never = (offs_t[:, None] + L) < 0  # always false, unknown to the compiler: keeps the probed loads alive
    tl.store(SINK + offs_t[:, None] * D + offs_d[None, :], sink, mask=never)


def stats_probe(q, k, v, flags, target=264):
    _, L, H, D = q.shape
    tile = 64
    n_tiles = -(-L // tile)
    chunks_per_head = max(1, target // H)
    tiles_per_chunk = -(-n_tiles // chunks_per_head)
    tiles_per_chunk += tiles_per_chunk % 2
    n_chunks = -(-n_tiles // tiles_per_chunk)
    f32 = dict(dtype=torch.float32, device=q.device)
    q_pool, k_pool = torch.empty(H, -(-L // 128), D, **f32), torch.empty(H, -(-L // 64), D, **f32)
    stats = torch.empty(H, n_chunks, D * D + 2 * D, **f32)
    sink = torch.empty(tile, D, **f32)
    _stats_probe_kernel[(n_chunks, H)](
        q, k, v, q_pool, k_pool, stats, sink, q.stride(1), q.stride(2), k.stride(1), k.stride(2), v.stride(1),
        v.stride(2), L, q_pool.shape[1], k_pool.shape[1], tiles_per_chunk, 1.0 / L,
        D=D, BLOCK_N=64, TILE=tile, num_warps=8, num_stages=2, **flags,
    )
    return q_pool, k_pool, stats


@triton.jit
def _route_kernel(
    Q_POOL, K_POOL, KEPT, n_qblocks, n_kblocks, n_keep,
    D: tl.constexpr, ROWS: tl.constexpr, NK: tl.constexpr, DC: tl.constexpr, PRECISION: tl.constexpr,
):
    """Routing for ROWS q-blocks of one (b, h) in one launch: scores = pooled q . smoothed pooled k (exact
    float32 FMAs, DC head-dim columns at a time) stay in registers and go straight into `_top_blocks`."""
    pid_bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, NK)
    offs_c = tl.arange(0, DC)
    row_ok = rows < n_qblocks
    col_ok = cols < n_kblocks
    q_rows = Q_POOL + pid_bh * n_qblocks * D + rows[:, None] * D + offs_c[None, :]
    k_cols = K_POOL + pid_bh * n_kblocks * D + cols[None, :] * D + offs_c[:, None]
    s = tl.zeros([ROWS, NK], dtype=tl.float32)
    for d0 in tl.static_range(0, D, DC):
        a = tl.load(q_rows + d0, mask=row_ok[:, None], other=0.0)
        b = tl.load(k_cols + d0, mask=col_ok[None, :], other=0.0)
        s = tl.dot(a, b, s, input_precision=PRECISION)
    real = row_ok[:, None] & col_ok[None, :]
    keep, slot = sla._top_blocks(s, real, n_keep)
    out = KEPT + (pid_bh * n_qblocks + rows)[:, None] * n_keep + slot
    tl.store(out, tl.broadcast_to(cols[None, :], (ROWS, NK)), mask=keep)


def sla_route(q_pool: torch.Tensor, k_pool: torch.Tensor, n_keep: int, rows: int | None = None,
              num_warps: int | None = None, precision: str = "ieee") -> torch.Tensor:
    """q_pool (B, H, nq, D), smoothed k_pool (B, H, nk, D) float32 -> int32 (B, H, nq, n_keep): the score matmul
    and `sla_select_blocks` in one Triton launch (scores never leave registers). `rows` / `num_warps`: sweeps."""
    B, H, nq, D = q_pool.shape
    nk = k_pool.shape[2]
    q_pool, k_pool = q_pool.contiguous(), k_pool.contiguous()
    kept = torch.empty(B, H, nq, n_keep, dtype=torch.int32, device=q_pool.device)
    width = triton.next_power_of_2(max(nk, 16))
    rows = rows or max(16, min(64, 8192 // width))
    num_warps = num_warps or (4 if width * rows <= 8192 else 8)
    _route_kernel[(-(-nq // rows), B * H)](
        q_pool, k_pool, kept, nq, nk, n_keep, D=D, ROWS=rows, NK=width, DC=min(D, 16), PRECISION=precision,
        num_warps=num_warps,
    )
    return kept


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def make_inputs(L, H=12, D=128, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    slow = torch.randn(1, L // 96 + 1, H, D, generator=g, device=DEV).repeat_interleave(96, dim=1)[:, :L]
    q = (torch.randn(1, L, H, D, generator=g, device=DEV) + slow).to(DT)
    k = (torch.randn(1, L, H, D, generator=g, device=DEV) + 0.5 * slow).to(DT)
    v = torch.randn(1, L, H, D, generator=g, device=DEV).to(DT)
    w = torch.randn(D, D, generator=g, device=DEV) / math.sqrt(D)
    b = 0.1 * torch.randn(D, generator=g, device=DEV)
    return q, k, v, w, b


def check_route(q, k, v, w, topk):
    q_pool, k_pool, _, _ = sla.sla_prologue(q, k, v, w)
    n_keep = sla.n_kept_blocks(topk, k_pool.shape[2])
    want = sla.sla_select_blocks(q_pool @ k_pool.transpose(-1, -2), n_keep)
    got = sla_route(q_pool, k_pool, n_keep)
    rows_differ = (want != got).any(-1).float().mean().item()
    return q_pool, k_pool, n_keep, rows_differ


class _Rows(list):
    """Prints each (name, ms) row as it is added, so a run cut short still reports what it measured."""

    def append(self, row):
        print(f"{row[0]:70s} {row[1]:8.4f} ms", flush=True)
        super().append(row)


def main():
    topk = 0.1
    if INTERP:
        for L in (700, 1000):
            q, k, v, w, _ = make_inputs(L, H=2, D=32)
            for t in (0.1, 0.3, 1.0):
                *_, differ = check_route(q, k, v, w, t)
                print(f"route L={L} topk={t}: rows differing from matmul+select {differ:.3f}")
        return
    print(torch.cuda.get_device_name(), "triton", triton.__version__)
    q, k, v, w, b = make_inputs(32760)
    rows = _Rows()
    sdpa = bench(lambda: torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v))))
    rows.append(("sdpa default (BLHD views)", sdpa))
    rows.append(("sla full op", bench(lambda: sla.sla_triton(q, k, v, w, b, topk))))
    rows.append(("plan", bench(lambda: sla.sla_triton_plan(q, k, v, w, b, topk))))
    rows.append(("prologue (stats + finalize)", bench(lambda: sla.sla_prologue(q, k, v, w))))
    q_pool, k_pool, n_keep, differ = check_route(q, k, v, w, topk)
    scores = q_pool @ k_pool.transpose(-1, -2)
    rows.append(("scores matmul", bench(lambda: q_pool @ k_pool.transpose(-1, -2))))
    rows.append(("select", bench(lambda: sla.sla_select_blocks(scores, n_keep))))
    rows.append((f"route fused (rows differing {differ:.1e})", bench(lambda: sla_route(q_pool, k_pool, n_keep))))
    full = dict(DO_POOL=True, DO_PHI=True, DO_KV=True, KV_T=False)
    probes = {
        "stats probe: all parts": full,
        "stats probe: phi sums elementwise": {**full, "PHI_EW_SUM": True},
        "stats probe: phi sums elementwise, kv as v^T phi": {**full, "PHI_EW_SUM": True, "KV_T": True},
        "stats probe: phi without row max (timing only)": {**full, "PHI_NO_MAX": True},
        "stats probe: loads only": dict(DO_POOL=False, DO_PHI=False, DO_KV=False, KV_T=False),
    }
    ref = stats_probe(q, k, v, full)
    for name, flags in probes.items():
        for target in (264,):
            try:
                got = stats_probe(q, k, v, flags, target)
                note = ""
                if name.endswith("v^T phi"):
                    kv_t = got[2][..., : 128 * 128].unflatten(-1, (128, 128)).transpose(-1, -2)
                    kv = ref[2][..., : 128 * 128].unflatten(-1, (128, 128))
                    note = f" (kv rel diff {((kv_t - kv).norm() / kv.norm()).item():.1e})" if target == 264 else ""
                rows.append((f"{name}, {target} programs{note}", bench(lambda: stats_probe(q, k, v, flags, target))))
            except Exception as exc:  # noqa: BLE001
                rows.append((f"{name} FAILED {type(exc).__name__}: {str(exc)[:120]}", float("nan")))
    want = sla.sla_select_blocks(scores, n_keep)
    for r, wps in ((1, 1), (2, 1), (1, 2), (2, 2), (4, 2), (4, 4)):
        try:
            same = torch.equal(sla.sla_select_blocks(scores, n_keep, r, wps), want)
            rows.append((f"  select rows={r} warps={wps} same={same}",
                         bench(lambda: sla.sla_select_blocks(scores, n_keep, r, wps))))
        except Exception as exc:  # noqa: BLE001
            rows.append((f"  select rows={r} warps={wps} FAILED {type(exc).__name__}", float("nan")))
    for r, wps in ((16, 2), (16, 4)):
        for prec in ("ieee", "tf32x3"):
            try:
                got = sla_route(q_pool, k_pool, n_keep, r, wps, prec)
                differ = (got != want).any(-1).float().mean().item()
                rows.append((f"  route rows={r} warps={wps} {prec} rows_differing={differ:.1e}",
                             bench(lambda: sla_route(q_pool, k_pool, n_keep, r, wps, prec))))
            except Exception as exc:  # noqa: BLE001
                rows.append((f"  route rows={r} warps={wps} {prec} FAILED {type(exc).__name__}", float("nan")))
    kept, kvw, ksum, bias = sla.sla_triton_plan(q, k, v, w, b, topk)
    rows.append(("attention kernel, 256 q-blocks (24 waves)", bench(
        lambda: sla.sla_sparse_attention(q, k, v, kept, kvw, ksum, bias))))
    kept_253 = kept[:, :, :253].contiguous()
    q_253 = q[:, : 253 * 128]
    rows.append(("attention kernel, 253 q-blocks (23 full waves)", bench(
        lambda: sla.sla_sparse_attention(q_253, k[:, : 253 * 128], v[:, : 253 * 128], kept_253.clamp(max=505),
                                         kvw, ksum, bias))))
    print(f"speedup of the full op over SDPA: {sdpa / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
