"""Specification of FP8 linears: e4m3fn row-wise quantization, the fused quant kernel, FP8Linear, and the
block-wise model conversion with its save/load round trip."""
from __future__ import annotations

import textwrap

import pytest
from _helpers import run_interpreted
import torch
from torch import nn

from kernels import fp8_linear as fp8
from kernels.fp8_linear import (
    FP8_DTYPE,
    FP8Linear,
    fp8_ffn_gelu,
    fp8_ffn_gelu_quantized,
    fp8_linear,
    fp8_linear_emulated,
    fp8_matmul_emulated,
    gelu_tanh_ref,
    launch_config,
    quantize_gelu_per_token_fp8,
    quantize_gelu_per_token_fp8_ref,
    quantize_per_token_fp8,
    quantize_per_token_fp8_ref,
    quantize_rows_fp8_ref,
    quantize_weight_fp8,
    row_segments,
)
from turbo_batch.models.checkpoints import CheckpointError, read_state_dict, save_safetensors_atomic
from turbo_batch.models.quantize import (
    DEFAULT_KEEP_BF16,
    FP8_FORMAT,
    fp8_state_dict,
    fp8_target_names,
    load_fp8_into_,
    name_matches,
    quantize_linears_,
    quantized_layer_names,
    save_fp8_safetensors,
)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def wide_range(m: int, k: int, seed: int = 0, dtype=torch.bfloat16) -> torch.Tensor:
    """Rows spanning many binades (so e4m3 subnormals, ties and saturation all occur) plus an all-zero row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(2.5 * torch.randn(m, k, generator=g))
    x = x * torch.logspace(-4, 4, m)[:, None]
    x[1] = 0
    return x.to(dtype)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.element_size() == 1 else t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def e4m3_steps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|position of a - position of b| on the ordered e4m3fn grid (+0 and -0 are the same point)."""
    def ordinal(t):
        u = t.view(torch.uint8).to(torch.int32)
        mag = u & 0x7F
        return torch.where(u & 0x80 != 0, -mag, mag)
    return (ordinal(a) - ordinal(b)).abs()


def gelu_quant_agreement(q, s, qr, sr) -> dict:
    """How far the fast-math GELU+quant kernel is from the portable reference: worst e4m3 step distance,
    fraction of codes that differ, worst relative scale difference."""
    steps = e4m3_steps_apart(q.cpu(), qr.cpu())
    return {"max_steps": int(steps.max()), "frac_diff": float((steps > 0).float().mean()),
            "scale_rel": float(((s.cpu() - sr.cpu()).abs() / sr.cpu()).max())}


# GELU+quant kernel vs reference: the kernel's GELU is within one bf16 ulp (2^-7 relative at worst) of the
# reference before quantization, so a row's amax (and scale) may move by that much and codes by one e4m3 step,
# on a small fraction of elements.
GELU_SCALE_REL = 2.0**-7
GELU_FRAC_DIFF = 0.05


# ============================================================================================ quantization
def test_weight_quantization_gives_one_fp32_scale_per_output_channel_equal_to_amax_over_448():
    w = torch.randn(48, 80, dtype=torch.bfloat16)
    q, s = quantize_weight_fp8(w)
    assert q.dtype == FP8_DTYPE and q.shape == (48, 80)
    assert s.dtype == torch.float32 and s.shape == (48,)
    torch.testing.assert_close(s, w.float().abs().amax(1) / 448, rtol=2**-23, atol=0)
    assert (q.float().abs().amax(1) == 448).all()  # each row's largest element lands on e4m3's max


def test_dequantized_values_lie_within_half_an_e4m3_step_of_the_input():
    """e4m3fn keeps 3 mantissa bits: a normal value q (|q| >= 2^-6) rounds by at most |q| * 2^-4, a subnormal
    one by at most half the subnormal step 2^-10. Scaled back: |deq - x| <= max(|x|/16, scale/1024), plus a few
    fp32 ulps from the reciprocal scale. The bound is tight (some element comes within 10% of it)."""
    x = wide_range(64, 96, dtype=torch.float32)
    q, s = quantize_per_token_fp8_ref(x)
    deq = q.float() * s[:, None]
    bound = torch.maximum(x.abs() / 16, s[:, None] / 1024) * (1 + 2**-20) + x.abs() * 2**-20
    err = (deq - x).abs()
    assert (err <= bound).all()
    assert (err / bound).max() > 0.9
    assert (err <= s[:, None] * 16 + 1e-30).all()  # coarsest form: half a step of the top binade [256, 448]


def test_an_all_zero_row_quantizes_to_zeros_with_a_finite_nonzero_scale():
    x = torch.zeros(3, 32, dtype=torch.bfloat16)
    x[2] = 1.0
    q, s = quantize_per_token_fp8_ref(x)
    assert torch.isfinite(s).all() and (s > 0).all()
    assert (q[:2].float() == 0).all() and (q[2].float() == 448).all()


def test_quantize_per_token_on_cpu_is_the_torch_reference():
    x = wide_range(8, 64)
    a, sa = quantize_per_token_fp8(x)
    b, sb = quantize_per_token_fp8_ref(x)
    assert torch.equal(bits(a), bits(b)) and torch.equal(sa, sb)


def test_rows_are_covered_by_at_most_three_power_of_two_segments_and_wide_rows_loop_over_tiles():
    for k in (16, 40, 96, 200, 1536, 4096, 5120, 8960, 13824, 16384):
        w = row_segments(k)
        assert all(s == 0 or s & (s - 1) == 0 for s in w) and k <= sum(w) < k + k / 6 + 16
    assert row_segments(8960) == (8192, 512, 256) and row_segments(1536) == (1024, 512, 0)
    narrow, wide = launch_config(1536), launch_config(8960)
    assert narrow["ROWS"] > 1 and not narrow["looped"] and launch_config(200)["ROWS"] > 1
    assert wide["looped"] and launch_config(8960, gelu=True)["ROWS"] == 1  # measured fastest on an H200
    assert launch_config(1536, max_tile=1024)["looped"] and launch_config(8960) == launch_config(8960)


# ============================================================================================ GELU + quantization
def test_portable_gelu_is_torchs_tanh_gelu_and_exactly_rounded_where_torch_cancels():
    """x / (1 + exp(-2u)) == 0.5 x (1 + tanh u): within 40 fp32 ulps of the float64 truth for |x| < 6 (bf16
    inputs), so every bf16 output is the correctly rounded one there; torch's own form loses bits for x < 0."""
    x = (torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 3).bfloat16().float()
    x = x[x.abs() < 6]
    t = x.double()
    truth = t / (1 + torch.exp(-2 * 0.7978845608028654 * (t + 0.044715 * t**3)))
    g = gelu_tanh_ref(x)
    assert g.dtype == torch.float32
    assert (((g.double() - truth).abs() / truth.abs().clamp_min(1e-30)) <= 40 * 2**-24).all()
    assert torch.equal(gelu_tanh_ref(x.bfloat16()), truth.bfloat16())
    torch_gelu = torch.nn.functional.gelu(x.bfloat16(), approximate="tanh")
    assert (torch_gelu.float() - truth.float()).abs().max() <= 2**-7 * truth.abs().max()


def test_gelu_quantization_is_quantization_of_the_gelu_rounded_to_the_activation_dtype():
    x = wide_range(16, 96, seed=5)
    q, s = quantize_gelu_per_token_fp8_ref(x)
    qr, sr = quantize_rows_fp8_ref(gelu_tanh_ref(x))
    assert gelu_tanh_ref(x).dtype == torch.bfloat16
    assert torch.equal(bits(q), bits(qr)) and torch.equal(s, sr)
    a, sa = quantize_gelu_per_token_fp8(x)
    assert torch.equal(bits(a), bits(q)) and torch.equal(sa, s)  # CPU: the public op is the reference


def test_fp8_ffn_runs_up_gelu_quant_down_and_equals_the_composition_of_its_references():
    g = torch.Generator().manual_seed(4)
    up, down = nn.Linear(64, 128), nn.Linear(128, 64)
    x = torch.randn(2, 9, 64, generator=g).bfloat16()
    fup, fdown = FP8Linear.from_linear(up), FP8Linear.from_linear(down)
    y = fp8_ffn_gelu(x, fup, fdown)
    hq, hs = quantize_gelu_per_token_fp8_ref(fup(x).reshape(-1, 128))
    want = fp8_matmul_emulated(hq, hs, fdown.weight, fdown.weight_scale, fdown.bias).view(2, 9, 64)
    assert y.shape == (2, 9, 64) and y.dtype == torch.bfloat16 and torch.equal(y, want)
    module_chain = fdown(nn.functional.gelu(fup(x), approximate="tanh"))
    assert rel_err(y, module_chain) < 0.01
    # two fp8 GEMMs in a row (each ~3.7% on Gaussian data, see above): ~5% against float32
    assert rel_err(y, down(nn.functional.gelu(up(x.float()), approximate="tanh"))) < 0.08


def test_the_fp8_ffn_on_rows_quantized_upstream_is_the_fp8_ffn_on_the_activation():
    """What a fused norm -> fp8 kernel hands the FFN (the rows `quantize_per_token_fp8` makes of x) gives the same
    bits as `fp8_ffn_gelu(x)`, which quantizes x itself."""
    g = torch.Generator().manual_seed(5)
    fup, fdown = FP8Linear.from_linear(nn.Linear(64, 128)), FP8Linear.from_linear(nn.Linear(128, 64))
    x = torch.randn(2, 9, 64, generator=g).bfloat16()
    y = fp8_ffn_gelu_quantized(*quantize_per_token_fp8(x.reshape(-1, 64)), fup, fdown, x.dtype)
    assert y.shape == (18, 64) and y.dtype == torch.bfloat16
    assert torch.equal(y.view(2, 9, 64), fp8_ffn_gelu(x, fup, fdown))


def test_fp8linear_uses_fast_accumulation_by_default_and_forward_quantized_is_forward():
    lin = nn.Linear(32, 48)
    m = FP8Linear.from_linear(lin)
    assert m.use_fast_accum and FP8Linear(32, 48).use_fast_accum
    assert not FP8Linear.from_linear(lin, use_fast_accum=False).use_fast_accum
    x = torch.randn(5, 32).bfloat16()
    assert torch.equal(m.forward_quantized(*quantize_per_token_fp8(x)), m(x))


# ============================================================================================ fp8_linear on CPU
def test_emulated_fp8_linear_tracks_the_float32_linear_within_5_percent():
    """Per-tensor relative L2 error of fp8 with per-token/per-channel scales on Gaussian data is ~3.7%
    (each operand carries ~2.6% rounding noise); 5% is the contract."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 512, generator=g)
    lin = nn.Linear(512, 384)
    y = fp8_linear(x, *quantize_weight_fp8(lin.weight.detach()), lin.bias.detach())
    assert y.dtype == torch.float32 and y.shape == (256, 384)
    assert rel_err(y, lin(x)) < 0.05


def test_cpu_emulation_agrees_with_torch_scaled_mm_on_the_same_fp8_operands():
    """Checks the meaning of every `_scaled_mm` argument (row-major A, column-major B, [M,1]/[1,N] scales,
    bf16 bias, bf16 out) against torch's own CPU implementation, where this torch build has one."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 64, generator=g).bfloat16()
    w = torch.randn(48, 64, generator=g)
    bias = torch.randn(48, generator=g).bfloat16()
    wq, ws = quantize_weight_fp8(w)
    xq, xs = quantize_per_token_fp8_ref(x)
    try:
        ref = torch._scaled_mm(xq, wq.t(), scale_a=xs.view(-1, 1), scale_b=ws.view(1, -1), bias=bias,
                               out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"no CPU _scaled_mm in this torch build: {e}")
    emu = fp8_linear_emulated(x, wq, ws, bias)
    torch.testing.assert_close(emu, ref, rtol=2**-7, atol=1e-3)


def test_fp8_linear_accepts_any_leading_shape_and_returns_the_input_dtype():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 5, 32, generator=g).bfloat16()
    wq, ws = quantize_weight_fp8(torch.randn(16, 32, generator=g))
    y = fp8_linear(x, wq, ws)
    assert y.shape == (2, 3, 5, 16) and y.dtype == torch.bfloat16
    assert torch.equal(y.reshape(30, 16), fp8_linear(x.reshape(30, 32), wq, ws))


# ============================================================================================ FP8Linear
def test_fp8linear_from_linear_holds_fp8_weight_fp32_scales_and_bf16_bias():
    lin = nn.Linear(32, 48)
    m = FP8Linear.from_linear(lin)
    sd = m.state_dict()
    assert set(sd) == {"weight", "weight_scale", "bias"}
    assert sd["weight"].dtype == FP8_DTYPE and sd["weight"].shape == (48, 32)
    assert sd["weight_scale"].dtype == torch.float32 and sd["weight_scale"].shape == (48,)
    assert sd["bias"].dtype == torch.bfloat16
    assert set(FP8Linear.from_linear(nn.Linear(32, 48, bias=False)).state_dict()) == {"weight", "weight_scale"}
    assert rel_err(m.dequantized_weight(), lin.weight) < 0.04


def test_fp8linear_round_trips_through_safetensors_bitwise_without_requantizing(tmp_path, monkeypatch):
    lin = nn.Linear(64, 32)
    m = FP8Linear.from_linear(lin)
    x = torch.randn(7, 64).bfloat16()
    y = m(x)
    save_safetensors_atomic(m.state_dict(), tmp_path / "l.safetensors")
    monkeypatch.setattr(fp8, "quantize_weight_fp8", lambda *a: pytest.fail("loading must not re-quantize"))
    sd = read_state_dict(tmp_path / "l.safetensors")
    shell = FP8Linear(64, 32, device="meta")
    shell.load_state_dict(sd, strict=True, assign=True)
    assert torch.equal(bits(shell.weight), bits(m.weight)) and torch.equal(shell.weight_scale, m.weight_scale)
    assert torch.equal(bits(shell(x)), bits(y))


def test_fp8linear_refuses_a_state_dict_whose_fp8_weight_was_cast():
    sd = FP8Linear.from_linear(nn.Linear(16, 16)).state_dict()
    sd["weight"] = sd["weight"].to(torch.bfloat16)
    with pytest.raises(RuntimeError, match="FP8Linear needs"):
        FP8Linear(16, 16).load_state_dict(sd, strict=True, assign=True)


def test_moving_a_quantized_model_to_another_dtype_keeps_fp8_weights_and_fp32_scales():
    m = nn.Sequential(FP8Linear.from_linear(nn.Linear(16, 16))).to(torch.float32)
    w, s = m[0].weight.clone(), m[0].weight_scale.clone()
    m.to(torch.bfloat16)
    assert m[0].weight.dtype == FP8_DTYPE and torch.equal(bits(m[0].weight), bits(w))
    assert m[0].weight_scale.dtype == torch.float32 and torch.equal(m[0].weight_scale, s)


# ============================================================================================ model conversion
class Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.attn_op = nn.Module()
        self.attn_op.local_attn = nn.Module()
        self.attn_op.local_attn.proj_l = nn.Linear(d // 2, d // 2)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.self_attn = Attn(d)
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        a = self.self_attn
        x = x + a.o(a.q(x) * torch.sigmoid(a.k(x)) + a.v(x))
        return x + self.ffn(self.norm(x))


class Toy(nn.Module):
    """Mimics the DiT's naming: blocks.{i}.self_attn.{q,k,v,o}, ...proj_l, blocks.{i}.ffn.{0,2}, head.head."""

    def __init__(self, d=32, layers=2):
        super().__init__()
        self.text_embedding = nn.Sequential(nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(d) for _ in range(layers))
        self.head = nn.Module()
        self.head.head = nn.Linear(d, 16)

    def forward(self, x):
        x = self.text_embedding(x)
        for b in self.blocks:
            x = b(x)
        return self.head.head(x)


def toy(seed: int) -> Toy:
    torch.manual_seed(seed)
    return Toy().eval()


def test_quantize_linears_converts_block_linears_but_not_proj_l_or_layers_outside_blocks():
    m = quantize_linears_(toy(0))
    kinds = {n: type(mod).__name__ for n, mod in m.named_modules() if isinstance(mod, (nn.Linear, FP8Linear))}
    for i in range(2):
        for n in ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "ffn.0", "ffn.2"):
            assert kinds[f"blocks.{i}.{n}"] == "FP8Linear"
        assert kinds[f"blocks.{i}.self_attn.attn_op.local_attn.proj_l"] == "Linear"
    assert kinds["head.head"] == "Linear" and kinds["text_embedding.0"] == "Linear"
    assert len(fp8_target_names(toy(0))) == 12


def test_layers_named_in_keep_stay_in_bf16_and_pieces_match_whole_name_components():
    m = quantize_linears_(toy(0), keep=("self_attn.o", "ffn.2"))
    for i in range(2):
        assert type(m.blocks[i].self_attn.o) is nn.Linear and type(m.blocks[i].ffn[2]) is nn.Linear
        assert isinstance(m.blocks[i].self_attn.q, FP8Linear) and isinstance(m.blocks[i].ffn[0], FP8Linear)
    assert len(fp8_target_names(toy(0), keep=("self_attn.o", "ffn.2"))) == 8
    assert name_matches("blocks.3.cross_attn.q", "cross_attn") and name_matches("blocks.3.self_attn.o", "self_attn.o")
    assert not name_matches("blocks.3.self_attn.out", "self_attn.o") and not name_matches("blocks.3.ffn.20", "ffn.2")


def test_the_runtime_default_keeps_the_attention_outputs_and_the_cross_attention_keys_values_in_bf16():
    from turbo_batch.config import load_config, resolve_runtime

    rt = resolve_runtime(load_config(["runtime.device=cpu"]))
    assert tuple(rt["fp8_keep_bf16"]) == DEFAULT_KEEP_BF16
    assert set(DEFAULT_KEEP_BF16) == {"self_attn.o", "cross_attn.o", "cross_attn.k", "cross_attn.v"}
    assert resolve_runtime(load_config(["runtime.device=cpu", "runtime.fp8_keep_bf16=[]"]))["fp8_keep_bf16"] == []
    with pytest.raises(Exception, match="fp8_keep_bf16"):
        resolve_runtime(load_config(["runtime.device=cpu", "runtime.fp8_keep_bf16=cross_attn"]))


def test_the_kept_layers_are_part_of_the_render_numerics_identity():
    from turbo_batch.worker import runtime_id

    rt = dict(device="cuda:0", dtype="bfloat16", attention="sla", quant="fp8", fp8_keep_bf16=["cross_attn"])
    assert runtime_id(rt) != runtime_id({**rt, "fp8_keep_bf16": []})
    assert runtime_id({**rt, "quant": "none"}) == runtime_id({**rt, "quant": "none", "fp8_keep_bf16": []})


def test_a_quantized_toy_model_stays_within_5_percent_of_its_float32_output():
    ref = toy(0)
    x = torch.randn(3, 10, 32)
    y_ref = ref(x)
    y = quantize_linears_(toy(0))(x)
    assert rel_err(y, y_ref) < 0.05


def test_quantizing_a_meta_model_gives_empty_fp8_shells():
    with torch.device("meta"):
        m = Toy()
    quantize_linears_(m)
    q = m.blocks[0].ffn[0]
    assert isinstance(q, FP8Linear) and q.weight.is_meta and q.weight.dtype == FP8_DTYPE


def test_a_quantized_model_saves_and_loads_onto_a_fresh_model_bit_for_bit(tmp_path):
    m = quantize_linears_(toy(0))
    path = tmp_path / "dit-fp8.safetensors"
    save_fp8_safetensors(m, path)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["quantization"] == FP8_FORMAT
    sd = read_state_dict(path)
    assert len(quantized_layer_names(sd)) == 12
    fresh = load_fp8_into_(toy(1), sd, str(path))  # different random weights: everything must be overwritten
    want, got = fp8_state_dict(m), fp8_state_dict(fresh)
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(bits(want[k]), bits(got[k])), k
    x = torch.randn(2, 5, 32)
    assert torch.equal(m(x), fresh(x))


def test_loading_an_fp8_checkpoint_with_a_missing_key_names_it():
    sd = fp8_state_dict(quantize_linears_(toy(0)))
    del sd["blocks.1.ffn.2.weight_scale"], sd["blocks.1.ffn.2.weight"]
    with pytest.raises(CheckpointError, match="blocks.1.ffn.2"):
        load_fp8_into_(toy(1), sd, "partial.safetensors")


def test_a_tiny_wan_dit_quantized_to_fp8_stays_close_to_float32():
    dit = pytest.importorskip("turbo_batch.models.dit")
    from omegaconf import OmegaConf

    from turbo_batch.config import load_preset
    from turbo_batch.models.dit_checkpoints import random_dit

    cfg = dit.DiTConfig.from_dict(OmegaConf.to_container(load_preset("tiny-t2v").dit))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 3, 8, 8, generator=g)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 6, cfg.text_dim, generator=g)
    with torch.no_grad():
        ref = random_dit(cfg, seed=1234).eval()(x, t, ctx)
        model = quantize_linears_(random_dit(cfg, seed=1234).eval())
        names = fp8_target_names(random_dit(cfg, seed=1234))
        y = model(x, t, ctx)
    assert len(names) == cfg.num_layers * 10  # self q,k,v,o + cross q,k,v,o + ffn.0, ffn.2
    assert all(isinstance(model.get_submodule(n), FP8Linear) for n in names)
    assert isinstance(model.blocks[0].self_attn.attn_op.local_attn.proj_l, nn.Linear)
    assert rel_err(y, ref) < 0.05  # measured 2.1% (bf16 weights alone: 0.6%)


# ============================================================================================ Triton (interpreter)
INTERPRET_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from kernels.fp8_linear import (quantize_per_token_fp8_triton, quantize_per_token_fp8_ref,
                                    quantize_gelu_per_token_fp8_triton, quantize_gelu_per_token_fp8_ref)
    from tests.test_fp8_linear import wide_range, gelu_quant_agreement
    out = {}
    for name, m, k, dtype, tile in [("bf16_one_tile", 24, 96, torch.bfloat16, 16384),
                                    ("fp32_one_tile", 9, 40, torch.float32, 16384),
                                    ("bf16_looped_tiles", 6, 200, torch.bfloat16, 64),
                                    ("bf16_dit_width", 3, 1536, torch.bfloat16, 16384),
                                    ("bf16_rows_not_a_multiple_of_rows_per_program", 37, 200, torch.bfloat16, 16384),
                                    ("bf16_ffn_width", 2, 8960, torch.bfloat16, 16384)]:
        x = wide_range(m, k, seed=len(name), dtype=dtype)
        for op, fn, ref in (("quant", quantize_per_token_fp8_triton, quantize_per_token_fp8_ref),
                            ("gelu", quantize_gelu_per_token_fp8_triton, quantize_gelu_per_token_fp8_ref)):
            q, s = fn(x, max_tile=tile)
            qr, sr = ref(x)
            if op == "quant":
                out[name] = {"q": bool(torch.equal(q.view(torch.uint8), qr.view(torch.uint8))),
                             "scale": bool(torch.equal(s, sr))}
            else:
                q2, s2 = fn(x, max_tile=tile)
                out["gelu_" + name] = {**gelu_quant_agreement(q, s, qr, sr), "repeat": bool(
                    torch.equal(q.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s, s2))}
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRET_SCRIPT, timeout=300)


QUANT_CASES = ["bf16_one_tile", "fp32_one_tile", "bf16_looped_tiles", "bf16_dit_width",
               "bf16_rows_not_a_multiple_of_rows_per_program", "bf16_ffn_width"]


@pytest.mark.parametrize("case", QUANT_CASES)
def test_triton_quant_kernel_in_interpreter_mode_is_bitwise_the_torch_reference(interpreted, case):
    assert interpreted[case] == {"q": True, "scale": True}


@pytest.mark.parametrize("case", QUANT_CASES)
def test_fused_gelu_quant_kernel_in_interpreter_mode_is_within_one_e4m3_step_and_repeats_bitwise(interpreted, case):
    r = interpreted["gelu_" + case]
    assert r["repeat"] and r["max_steps"] <= 1 and r["frac_diff"] <= GELU_FRAC_DIFF, r
    assert r["scale_rel"] <= GELU_SCALE_REL, r


# ============================================================================================ GPU
@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m,k,tile", [(4096, 1536, 16384), (1000, 8960, 16384), (333, 13824, 16384), (257, 5120, 1024)])
def test_triton_quant_kernel_on_cuda_is_bitwise_the_torch_reference(m, k, tile):
    x = wide_range(m, k, seed=k).cuda()
    q, s = fp8.quantize_per_token_fp8_triton(x, max_tile=tile)
    qr, sr = quantize_per_token_fp8_ref(x)
    assert torch.equal(bits(q), bits(qr)) and torch.equal(s, sr)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m,k,tile", [(4096, 8960, 16384), (333, 13824, 16384), (1000, 1536, 16384), (257, 8960, 1024)])
def test_fused_gelu_quant_kernel_on_cuda_is_within_one_e4m3_step_of_the_reference_and_repeats_bitwise(m, k, tile):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("Triton's fp8e4nv needs sm89+")
    x = wide_range(m, k, seed=k).cuda()
    q, s = fp8.quantize_gelu_per_token_fp8_triton(x, max_tile=tile)
    qr, sr = quantize_gelu_per_token_fp8_ref(x.cpu())  # the CPU path is the reference
    r = gelu_quant_agreement(q, s, qr, sr)
    assert r["max_steps"] <= 1 and r["frac_diff"] <= 0.01 and r["scale_rel"] <= GELU_SCALE_REL, r
    q2, s2 = fp8.quantize_gelu_per_token_fp8_triton(x, max_tile=tile)
    assert torch.equal(bits(q), bits(q2)) and torch.equal(s, s2)


@pytest.mark.gpu
@cuda
def test_fp8_ffn_on_cuda_tracks_the_bf16_ffn_and_repeats_its_bits():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("row-wise _scaled_mm needs sm89+")
    torch.manual_seed(0)
    up, down = nn.Linear(1536, 8960).cuda().bfloat16(), nn.Linear(8960, 1536).cuda().bfloat16()
    x = torch.randn(2, 2048, 1536, device="cuda").bfloat16()
    fup, fdown = FP8Linear.from_linear(up), FP8Linear.from_linear(down)
    y = fp8_ffn_gelu(x, fup, fdown)
    want = down(nn.functional.gelu(up(x), approximate="tanh"))
    assert rel_err(y, want) < 0.08  # two fp8 GEMMs (~5%, as on the CPU)
    assert rel_err(y, fdown(nn.functional.gelu(fup(x), approximate="tanh"))) < 0.01
    assert torch.equal(bits(y), bits(fp8_ffn_gelu(x, fup, fdown)))


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("m,k,n", [(4096, 1536, 1536), (1000, 1536, 8960), (333, 8960, 1536), (33, 5120, 13824)])
def test_fp8_linear_on_cuda_tracks_bf16_linear_and_matches_its_cpu_emulation(m, k, n):
    """vs bf16 F.linear: < 5% relative L2 (fp8 rounding noise, ~3.7% on Gaussian data). vs the float32
    emulation of the same fp8 operands: < 1% (only accumulation order and bf16 output rounding differ)."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("row-wise _scaled_mm needs sm89+")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(m, k, device="cuda", generator=g).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=g) / k**0.5).bfloat16()
    b = (0.1 * torch.randn(n, device="cuda", generator=g)).bfloat16()
    wq, ws = quantize_weight_fp8(w)
    y = fp8_linear(x, wq, ws, b)
    assert y.dtype == torch.bfloat16 and y.shape == (m, n)
    assert rel_err(y, torch.nn.functional.linear(x, w, b)) < 0.05
    assert rel_err(y, fp8_linear_emulated(x, wq, ws, b)) < 0.01


@pytest.mark.gpu
@cuda
def test_fp8_linear_on_cuda_gives_the_same_bits_twice():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("row-wise _scaled_mm needs sm89+")
    m = FP8Linear.from_linear(nn.Linear(1536, 8960).cuda())
    x = torch.randn(2, 4096, 1536, device="cuda").bfloat16()
    a, b = m(x), m(x)
    assert torch.equal(bits(a), bits(b))
    q1, s1 = quantize_per_token_fp8(x.view(-1, 1536))
    q2, s2 = quantize_per_token_fp8(x.view(-1, 1536))
    assert torch.equal(bits(q1), bits(q2)) and torch.equal(s1, s2)
