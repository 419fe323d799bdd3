"""Specification of the cross-attention with collapsed text padding (kernels/cross_attention.py) and of the DiT's use
of it: attending to a prompt's tokens plus one key standing for n zero-padding rows is attending to all of them.
On CPU the Triton kernel runs in Triton's interpreter (float32 inputs: its bf16 dot is not exact there)."""
from __future__ import annotations

import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from _helpers import run_interpreted, wan_480p_inputs
from kernels import cross_attention as ca
from kernels.cross_attention import cross_attention, cross_attention_reference, cross_attention_sdpa, pad_weight_biases
from turbo_batch.models import dit
from turbo_batch.models.dit import TEXT_ROWS_BUCKET, DiTConfig, collapse_text_padding
from turbo_batch.models.dit_checkpoints import random_dit
from turbo_batch.models.text_encoder import without_padding


def expanded(k: torch.Tensor, pad_count: int) -> torch.Tensor:
    """k with its last row repeated pad_count times: what the collapsed key stands for."""
    return torch.cat([k[:, :-1], k[:, -1:].expand(-1, pad_count, -1, -1)], dim=1)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_one_key_with_ln_n_on_its_logit_weighs_as_n_copies_of_it():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 40, 3, 16, generator=g, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, expanded(k, 300), expanded(v, 300))))
    assert rel(cross_attention_reference(q, k, v, 300), full.transpose(1, 2)) < 1e-12


def test_pad_count_zero_is_plain_softmax_attention():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 33, 2, 32, generator=g) for _ in range(3))
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert rel(cross_attention(q, k, v, 0), sdpa) < 1e-6


def test_bad_shapes_and_counts_fail_with_the_shapes_named():
    q = torch.zeros(1, 8, 2, 16)
    with pytest.raises(ValueError, match="differ in batch, heads or head_dim"):
        cross_attention(q, torch.zeros(1, 4, 3, 16), torch.zeros(1, 4, 3, 16))
    with pytest.raises(ValueError, match="pad_count must be >= 0"):
        cross_attention(q, torch.zeros(1, 4, 2, 16), torch.zeros(1, 4, 2, 16), -1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_pad_weight_splits_into_logit_offsets_representable_in_the_inputs_dtype(dtype):
    """ln n rounded to bf16 is off by up to 1.6%; a few representable offsets whose exps sum to n are not."""
    for n in range(1, 1025):
        biases = pad_weight_biases(n, dtype)
        finite = [b for b in biases if b != float("-inf")]
        assert len(biases) == ca.PAD_TERMS and finite
        assert all(float(torch.tensor(b, dtype=torch.float64).to(dtype)) == b for b in finite)
        assert abs(sum(math.exp(b) for b in finite) - n) / n < 1e-5, (n, biases)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 5e-3)])
def test_the_sdpa_backend_with_the_pad_bias_equals_attention_over_every_padding_row(dtype, tol):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 50, 3, 32, generator=g).to(dtype) for _ in range(3))
    for pad in (0, 1, 447):
        ref = cross_attention_reference(q.double(), k.double(), v.double(), pad)
        assert rel(cross_attention_sdpa(q, k, v, pad), ref) < tol, pad


INTERPRETED = textwrap.dedent(
    """
    import json, torch
    from kernels.cross_attention import cross_attention_reference, cross_attention_triton
    from test_cross_attention import expanded, rel
    g = torch.Generator().manual_seed(0)
    out = {}
    # (batch, queries, heads, head_dim, keys incl. the pad row, pad_count): ragged query and key tails, one key block
    # or several, no pad row, a query tensor that is a strided view
    for case in [(2, 200, 2, 32, 65, 447), (1, 130, 3, 64, 17, 0), (1, 64, 1, 16, 129, 383), (1, 128, 2, 16, 1, 511)]:
        B, Lq, H, D, S, pad = case
        q, k, v = (torch.randn(B, n, H, D, generator=g) for n in (Lq, S, S))
        q = torch.randn(B, Lq, H, 2 * D, generator=g)[..., :D] if D == 32 else q
        o = cross_attention_triton(q, k, v, pad)
        ref = cross_attention_reference(q, expanded(k, pad), expanded(v, pad), 0) if pad else \\
            cross_attention_reference(q, k, v, 0)
        out[str(case)] = {"rel": rel(o, ref), "repeat": bool(torch.equal(o, cross_attention_triton(q, k, v, pad))),
                          "alone": bool(torch.equal(o[1:], cross_attention_triton(q[1:], k[1:], v[1:], pad)))
                          if B > 1 else True}
    print("RESULT" + json.dumps(out))
    """
)


def test_the_triton_kernel_in_interpreter_mode_equals_attention_over_every_padding_row():
    """Ragged tails, several key blocks or one, a lone pad key; same bits on a repeat and whatever the batch."""
    r = run_interpreted(INTERPRETED, timeout=300)
    for case, got in r.items():
        assert got["rel"] < 1e-5 and got["repeat"] and got["alone"], (case, got)


@pytest.fixture
def collapse_on(monkeypatch):
    """The collapse for contexts of up to 256 rows (the default, dit.COLLAPSE_MAX_ROWS, is 128)."""
    monkeypatch.setattr(dit, "COLLAPSE_MAX_ROWS", 256)


def test_by_default_prompts_of_up_to_128_tokens_collapse_and_longer_ones_keep_every_row():
    for tokens, kept in ((50, 64), (64, 64), (65, 128), (128, 128)):
        rows, pad = collapse_text_padding(torch.randn(1, tokens, 8), 512)
        assert rows.shape == (1, kept + 1, 8) and pad == 512 - kept
    rows, pad = collapse_text_padding(torch.randn(1, 129, 8), 512)
    assert rows.shape == (1, 512, 8) and pad == 0


def test_collapse_text_padding_keeps_bucketed_rows_plus_one_row_for_the_rest(collapse_on):
    ctx = torch.randn(2, 50, 8)
    rows, pad = collapse_text_padding(ctx, 512)
    assert rows.shape == (2, TEXT_ROWS_BUCKET + 1, 8) and pad == 512 - TEXT_ROWS_BUCKET
    assert torch.equal(rows[:, :50], ctx) and not rows[:, 50:].any()
    full, pad = collapse_text_padding(torch.randn(1, 500, 8), 512)  # long prompts keep every row
    assert full.shape == (1, 512, 8) and pad == 0
    tiny, pad = collapse_text_padding(torch.randn(1, 5, 8), 16)  # short text windows too
    assert tiny.shape == (1, 16, 8) and pad == 0


def test_the_fused_dit_forward_with_collapsed_padding_equals_the_padded_forward(collapse_on):
    """The fused path (forced on CPU: torch references stand in for the kernels) on a 20-token prompt against the
    same prompt zero-padded to 512 rows, which collapses nothing, and against the reference path."""
    cfg = DiTConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=2, freq_dim=32, text_dim=32, text_len=512)
    m = random_dit(cfg, seed=5).eval()
    m.use_fused = lambda x, dtype: True
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 8, 12, generator=g)
    ctx = torch.randn(1, 20, 32, generator=g)
    t = torch.tensor([700.0])
    with torch.no_grad():
        short = m(x, t, ctx)
        padded = m(x, t, F.pad(ctx, (0, 0, 0, 492)))
        m.use_fused = lambda x, dtype: False
        reference = m(x, t, ctx)
    assert rel(short, padded) < 1e-5 and rel(short, reference) < 1e-5


def test_the_pipeline_hands_the_dit_a_prompts_tokens_without_the_encoders_zero_rows():
    emb = torch.zeros(512, 8)
    emb[:7] = torch.randn(7, 8)
    assert without_padding(emb).shape == (7, 8) and without_padding(torch.zeros(16, 8)).shape == (1, 8)
    batch = pad_sequence([emb[:7], emb[:3]], batch_first=True)  # how the pipeline batches them
    assert batch.shape == (2, 7, 8) and torch.equal(batch[1, :3], emb[:3]) and not batch[1, 3:].any()


# ============================================================================================================ GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
@pytest.mark.parametrize("rows,heads", [(64, 12), (128, 40), (256, 12)])
def test_on_the_gpu_a_collapsed_context_matches_sdpa_over_all_512_rows(rows, heads, backend, monkeypatch):
    """bf16 at the DiT's shapes (1.3B 480p: 32760 tokens; 14B heads), fresh random inputs; bits repeat."""
    monkeypatch.setattr(ca, "BACKEND", backend)
    g = torch.Generator(device="cuda").manual_seed(rows)
    q = torch.randn(1, 32760, heads, 128, device="cuda", generator=g, dtype=torch.bfloat16)
    k, v = (torch.randn(1, rows + 1, heads, 128, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    pad = 512 - rows
    out = cross_attention(q, k, v, pad)
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, expanded(k, pad), expanded(v, pad))))
    ref = cross_attention_reference(q, k, v, pad)
    assert rel(out, ref) < 5e-3 and rel(sdpa.transpose(1, 2), ref) < 5e-3
    assert torch.equal(out, cross_attention(q, k, v, pad))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_on_the_gpu_the_1_3b_dit_with_a_40_token_prompt_matches_the_prompt_padded_to_512_rows(collapse_on, backend,
                                                                                               monkeypatch):
    """Real width and token count (480p, 81 frames), four blocks, bf16: the fused forward collapses the short
    prompt's padding; the padded context attends to all 512 rows through SDPA."""
    monkeypatch.setattr(ca, "BACKEND", backend)
    cfg = DiTConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=4)
    m = random_dit(cfg, seed=0, device="cuda", dtype=torch.bfloat16, on_device=True).eval()
    x, t, ctx = wan_480p_inputs(prompt_tokens=40)
    with torch.no_grad():
        short, padded = m(x, t, ctx), m(x, t, F.pad(ctx, (0, 0, 0, 472)))
    assert rel(short, padded) < 1e-2 and torch.equal(short, m(x, t, ctx))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_on_the_gpu_a_collapsed_row_is_bit_identical_alone_or_batched_with_prompts_of_its_bucket(collapse_on, backend,
                                                                                                 monkeypatch):
    """What the renderer relies on to turn the collapse on (it batches rows of one `text_rows` bucket): prompts of
    20, 45 and 60 tokens batched as the pipeline pads them, each against itself alone; bf16, fused path."""
    monkeypatch.setattr(ca, "BACKEND", backend)
    cfg = DiTConfig(dim=512, ffn_dim=1024, num_heads=4, num_layers=2, text_dim=256, text_len=512)
    m = random_dit(cfg, seed=5, device="cuda", dtype=torch.bfloat16, on_device=True).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, cfg.in_dim, 5, 30, 52, generator=g).cuda()
    t = torch.tensor([999.0, 500.0, 20.0]).cuda()
    prompts = [torch.randn(n, cfg.text_dim, generator=g).cuda() for n in (20, 45, 60)]
    assert len({dit.text_rows(len(p), cfg.text_len) for p in prompts}) == 1
    with torch.no_grad():
        batched = m(x, t, pad_sequence(prompts, batch_first=True))
        for i, p in enumerate(prompts):
            assert torch.equal(m(x[i:i + 1], t[i:i + 1], p[None])[0], batched[i]), f"row {i}"
