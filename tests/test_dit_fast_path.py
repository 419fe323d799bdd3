"""Specification of the DiT's fused fast path (CUDA, bf16): the same math as the torch path within bf16
rounding, deterministic, and never touching the caller's tensors. On CPU the fused path is run with every
kernel's torch reference (forced through `use_fused`), which checks its wiring and dtype semantics, and with the
real Triton kernels under the interpreter where bits matter (the fused LayerNorm -> fp8 wiring)."""
from __future__ import annotations

import textwrap

from _helpers import run_interpreted, wan_480p_inputs
import pytest
import torch

from kernels.norms import rope_cos_sin
from turbo_batch.models import dit
from turbo_batch.models.dit import DiTConfig, FeedForward
from turbo_batch.models.dit_checkpoints import random_dit
from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_
from tests.test_dit import inputs, tiny_config

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def forced_fused(model):
    """The model with the fused path switched on whatever the device (CPU: the kernels' torch references)."""
    model.use_fused = lambda x, dtype: True
    return model


def test_the_fused_path_is_on_by_default_but_only_for_bf16_models_on_cuda():
    m = random_dit(tiny_config(), seed=1, dtype=torch.bfloat16)
    assert m.fused is True
    x = torch.zeros(1)
    assert not m.use_fused(x, torch.bfloat16)  # CPU
    if torch.cuda.is_available():
        assert m.use_fused(x.cuda(), torch.bfloat16) and not m.use_fused(x.cuda(), torch.float32)
        m.fused = False
        assert not m.use_fused(x.cuda(), torch.bfloat16)


@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_fused_wiring_with_torch_references_tracks_the_torch_path_on_cpu(fp8):
    m = random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval()
    if fp8:
        quantize_linears_(m)
    x, t, context = inputs(m.cfg, batch=2)
    with torch.no_grad():
        want = m(x, t, context)
        got = forced_fused(m)(x, t, context)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert rel_l2(got, want) < 1e-3  # measured 0 (bit-identical) on CPU


def counting_fused_norm_quantizer(monkeypatch) -> list:
    """Count the DiT's calls of the fused LayerNorm -> fp8 kernel (still running it)."""
    calls, real = [], dit.layernorm_modulate_fp8
    monkeypatch.setattr(dit, "layernorm_modulate_fp8", lambda *a: calls.append(a[0].shape) or real(*a))
    return calls


def forward_with_and_without_norm_quantization(m, args, monkeypatch):
    """(output with the fused LayerNorm -> fp8 rows, output with the wiring before it: modulate to bf16, then each
    FP8 projection quantizes)."""
    with torch.no_grad():
        fused = m(*args)
        monkeypatch.setattr(dit, "quantize_in_norm", lambda *linears: False)
        unfused = m(*args)
    return fused, unfused


@pytest.mark.parametrize("keep", [(), DEFAULT_KEEP_BF16], ids=["all-fp8", "default-keep"])
def test_fp8_q_k_v_and_ffn_take_their_rows_from_the_fused_norm_quantizer_with_the_same_output(keep, monkeypatch):
    """Self-attention q/k/v, the FFN and the cross-attention q are FP8 in both layouts (DEFAULT_KEEP_BF16 keeps only
    the o projections and the cross-attention k/v), so each block feeds them from `layernorm_modulate_fp8` (norm1,
    norm2) and `layernorm_affine_fp8` (norm3); the output bits do not change."""
    m = forced_fused(quantize_linears_(random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval(), keep=keep))
    x, t, context = inputs(m.cfg, batch=2)
    calls = counting_fused_norm_quantizer(monkeypatch)
    affine_calls, real_affine = [], dit.layernorm_affine_fp8
    monkeypatch.setattr(dit, "layernorm_affine_fp8", lambda *a: affine_calls.append(a[0].shape) or real_affine(*a))
    fused, unfused = forward_with_and_without_norm_quantization(m, (x, t, context), monkeypatch)
    assert len(calls) == 2 * m.cfg.num_layers
    assert len(affine_calls) == m.cfg.num_layers
    assert torch.equal(fused, unfused)


def test_blocks_whose_projections_are_not_all_fp8_modulate_to_bf16_as_before(monkeypatch):
    m = random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval()
    quantize_linears_(m, keep=("self_attn.v", "ffn.2"))  # q, k and the FFN up in fp8, but not all of either group
    calls = counting_fused_norm_quantizer(monkeypatch)
    x, t, context = inputs(m.cfg, batch=1)
    with torch.no_grad():
        forced_fused(m)(x, t, context)
    assert calls == []


INTERPRETED_DIT = textwrap.dedent(
    """
    import json, torch
    from turbo_batch.models import dit
    from turbo_batch.models.dit_checkpoints import random_dit
    from turbo_batch.models.quantize import quantize_linears_
    from tests.test_dit import inputs, tiny_config
    m = quantize_linears_(random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval())
    m.use_fused = lambda x, dtype: True  # every norm, quantize and residual kernel runs in the Triton interpreter
    x, t, context = inputs(m.cfg, batch=2)
    with torch.no_grad():
        fused = m(x, t, context)
        dit.quantize_in_norm = lambda *linears: False
        unfused = m(x, t, context)
    print("RESULT" + json.dumps({"same_bits": bool(torch.equal(fused, unfused)), "finite": bool(fused.isfinite().all())}))
    """
)


def test_with_the_real_kernels_in_interpreter_mode_the_fused_norm_quantizer_leaves_the_fp8_forward_bits_unchanged():
    assert run_interpreted(INTERPRETED_DIT, timeout=300) == {"same_bits": True, "finite": True}


INTERPRETED_EPILOGUES = textwrap.dedent(
    """
    import json, torch
    from turbo_batch.models import dit
    from turbo_batch.models.dit import DiTConfig
    from turbo_batch.models.dit_checkpoints import random_dit
    from turbo_batch.models.quantize import DEFAULT_KEEP_BF16, quantize_linears_
    from tests.test_dit import inputs
    # the smallest widths the Triton GEMM tiles take (N a multiple of 128)
    cfg = DiTConfig(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_dim=32, text_len=16)
    calls = []
    for name in ("fp8_matmul_gelu_quant_rows_triton", "matmul_residual_triton"):
        real = getattr(dit, name)
        setattr(dit, name, lambda *a, _real=real, _name=name, **k: calls.append(_name) or _real(*a, **k))
    out = {}
    for label, keep in (("bf16", None), ("fp8_default", DEFAULT_KEEP_BF16), ("fp8_all", ())):
        m = random_dit(cfg, seed=3, dtype=torch.bfloat16).eval()
        if keep is not None:
            quantize_linears_(m, keep=keep)
        m.use_fused = lambda x, dtype: True
        m.set_fused_epilogues(True)
        x, t, context = inputs(m.cfg, batch=2)
        with torch.no_grad():
            calls.clear()
            fused = m(x, t, context)
            n_calls = list(calls)
            again = m(x, t, context)
            m.set_fused_epilogues(False)
            calls.clear()
            unfused = m(x, t, context)
        out[label] = {"calls": n_calls, "unfused_calls": len(calls), "same_bits_twice": bool(torch.equal(fused, again)),
                      "rel": ((fused - unfused).norm() / unfused.norm()).item()}
    print("RESULT" + json.dumps(out))
    """
)


def test_with_fused_epilogues_each_residual_add_and_the_fp8_ffn_run_inside_triton_gemms_in_interpreter_mode():
    """Per block: the self- and cross-attention output projections add their (gated) residual in the GEMM
    epilogue, and an FP8 FFN is two GEMMs (GELU + quantization with bounded per-token scales, then the gated
    residual). The output moves only by GEMM summation order (bf16) or, for FP8, by the hidden's bounded scales."""
    r = run_interpreted(INTERPRETED_EPILOGUES, timeout=300)
    assert r["bf16"]["calls"] == ["matmul_residual_triton"] * 2 * 2  # the bf16 FFN stays unfused: 2 per block
    fp8_block = ["matmul_residual_triton"] * 2 + ["fp8_matmul_gelu_quant_rows_triton", "matmul_residual_triton"]
    assert r["fp8_default"]["calls"] == fp8_block * 2 and r["fp8_all"]["calls"] == fp8_block * 2
    for label in r:
        assert r[label]["unfused_calls"] == 0 and r[label]["same_bits_twice"], (label, r[label])
    assert r["bf16"]["rel"] < 1e-2 and r["fp8_default"]["rel"] < 0.05 and r["fp8_all"]["rel"] < 0.05, r


def test_a_fused_block_leaves_the_callers_stream_untouched():
    m = random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval()
    cfg = m.cfg
    grid = (2, 2, 3)
    h = torch.randn(1, 12, cfg.dim).bfloat16()
    before = h.clone()
    e, e6 = m.time_embed(torch.tensor([500.0]))
    context = m.text_embedding(torch.randn(1, cfg.text_len, cfg.text_dim).bfloat16())
    with torch.no_grad():
        out = m.blocks[0].forward_fused(h, e6, context, *m.rope_cos_sin(grid, "cpu"))
        want = m.blocks[0](h, e6, context, m.rope(grid, "cpu"))
    assert torch.equal(h, before) and out.data_ptr() != h.data_ptr()
    assert rel_l2(out, want) < 1e-3


def test_the_stacked_modulation_terms_are_each_blocks_own_modulation_plus_e6():
    """`modulation_terms` computes every block's AdaLN terms in three launches: the values `Block.forward` computes,
    shifts and scales in fp32, gates in the activation dtype, for every batch row."""
    m = random_dit(tiny_config(), seed=2, dtype=torch.bfloat16)
    for block in m.blocks:
        block.modulation.data.normal_()
    e6 = torch.randn(2, 6, m.cfg.dim)
    terms = dit.modulation_terms(m.blocks, e6, torch.bfloat16)
    assert len(terms) == len(m.blocks)
    for block, got in zip(m.blocks, terms):
        chunks = (block.modulation.float() + e6).unbind(1)
        want = (*chunks[:2], chunks[2].bfloat16(), *chunks[3:5], chunks[5].bfloat16())
        assert all(torch.equal(g, w) and g.dtype == w.dtype for g, w in zip(got, want))


def test_rope_cos_sin_is_cached_per_grid_and_equals_the_complex_table():
    m = random_dit(tiny_config(), seed=1)
    cos, sin = m.rope_cos_sin((2, 3, 4), "cpu")
    assert m.rope_cos_sin((2, 3, 4), "cpu")[0] is cos
    table = m.rope((2, 3, 4), "cpu").flatten(1)
    assert cos.shape == (24, m.cfg.head_dim // 2) and cos.is_contiguous()
    assert torch.equal(cos, table.real) and torch.equal(sin, table.imag)
    c2, s2 = rope_cos_sin(2, 3, 4, m.cfg.head_dim)
    torch.testing.assert_close(cos, c2, rtol=0, atol=1e-7)


def test_the_ffn_keeps_the_checkpoint_keys_and_is_a_plain_sequential_when_not_fp8():
    ffn = FeedForward(32, 64)
    assert set(ffn.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    x = torch.randn(3, 32)
    assert torch.equal(ffn.forward_fused(x), ffn(x))


# ------------------------------------------------------------------------------------------------ GPU
def gpu_case(fp8: bool, keep=()):
    cfg = DiTConfig(dim=512, ffn_dim=1536, num_heads=4, num_layers=3, text_dim=256, text_len=128)
    m = random_dit(cfg, seed=5, device="cuda", dtype=torch.bfloat16, on_device=True).eval()
    if fp8:
        quantize_linears_(m, keep=keep)
    x, t, context = (u.cuda() for u in inputs(cfg, batch=2, frames=5, height=30, width=52, ctx_len=100))
    return m, (x, t[:2], context)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["bf16", "fp8"])
def test_gpu_fused_forward_matches_the_torch_path_and_repeats_its_bits(fp8):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm89+")
    m, args = gpu_case(fp8)
    with torch.no_grad():
        fused = m(*args)
        again = m(*args)
        m.fused = False
        plain = m(*args)
    assert torch.isfinite(fused).all()
    # bf16: one rounding apart per op. FP8: a 1-ulp difference before a quantizer can flip an e4m3 rounding
    # (a 6% step), so the two paths drift further apart; measured 1.03e-2 on an H200.
    assert rel_l2(fused, plain) <= (2e-2 if fp8 else 1e-2)
    assert torch.equal(fused, again)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("keep", [(), DEFAULT_KEEP_BF16], ids=["all-fp8", "default-keep"])
def test_gpu_the_fused_norm_quantizer_leaves_the_fp8_forward_bits_unchanged(keep, monkeypatch):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm89+")
    m, args = gpu_case(True, keep=keep)
    calls = counting_fused_norm_quantizer(monkeypatch)
    fused, unfused = forward_with_and_without_norm_quantization(m, args, monkeypatch)
    assert len(calls) == 2 * m.cfg.num_layers and torch.equal(fused, unfused)


@pytest.mark.gpu
@gpu
def test_gpu_fp8_fused_forward_stays_within_3_percent_of_bf16():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm89+")
    ref, args = gpu_case(False)
    m, _ = gpu_case(True, keep=DEFAULT_KEEP_BF16)
    with torch.no_grad():
        assert rel_l2(m(*args), ref(*args)) <= 3e-2


@pytest.mark.gpu
@gpu
def test_gpu_the_real_size_1_3b_dit_in_default_fp8_stays_within_3_percent_of_bf16_and_repeats_its_bits():
    """Wan2.1 1.3B at 480p, 81 frames (32760 tokens), random weights, dense attention: the default FP8 model
    (runtime.fp8_keep_bf16) against the same weights in bf16."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm89+")
    cfg = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
    m = random_dit(cfg, seed=0, device="cuda", dtype=torch.bfloat16, on_device=True).eval()
    x, t, ctx = wan_480p_inputs()
    with torch.no_grad():
        ref = m(x, t, ctx)
        quantize_linears_(m, keep=DEFAULT_KEEP_BF16)
        out, again = m(x, t, ctx), m(x, t, ctx)
    assert torch.isfinite(out).all() and torch.equal(out, again)
    assert rel_l2(out, ref) <= 3e-2


def test_the_ffn_hidden_bound_is_recomputed_when_the_up_projection_weights_change():
    from kernels.fp8_gemm import weight_row_l1_max

    m = quantize_linears_(random_dit(tiny_config(), seed=3, dtype=torch.bfloat16).eval())
    ffn = m.blocks[0].ffn
    first = ffn.hidden_bound()
    assert ffn.hidden_bound()[0] is first[0]  # cached
    ffn[0].weight_scale.mul_(2)  # an in-place reload of the scales (as load_state_dict does) bumps their version
    assert torch.equal(ffn.hidden_bound()[0], weight_row_l1_max(ffn[0].weight, ffn[0].weight_scale))
    assert not torch.equal(ffn.hidden_bound()[0], first[0])
