"""Specification of the Wan DiT: config, construction, shapes, numerics contracts and batch invariance."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from turbo_batch.config import load_preset
from turbo_batch.models.dit import DiTConfig, WanDiT, rope_pairs
from turbo_batch.models.dit_checkpoints import build_dit, random_dit


def tiny_config(preset: str = "tiny-t2v") -> DiTConfig:
    return DiTConfig.from_dict(OmegaConf.to_container(load_preset(preset).dit))


def inputs(cfg: DiTConfig, batch: int, seed: int = 0, frames: int = 3, height: int = 8, width: int = 12,
           ctx_len: int = 10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_dim, frames, height, width, generator=g)
    t = torch.tensor([999.0, 500.0, 20.0, 875.0][:batch])
    context = torch.randn(batch, ctx_len, cfg.text_dim, generator=g)
    return x, t, context


@pytest.fixture(scope="module", params=["tiny-t2v", "tiny-i2v"])
def model(request) -> WanDiT:
    return random_dit(tiny_config(request.param), seed=1234).eval()


def test_config_reads_a_preset_section_and_ignores_unknown_keys():
    section = {"dim": 64, "ffn_dim": 128, "num_heads": 4, "num_layers": 1, "patch_size": [1, 2, 2], "foo": 1}
    cfg = DiTConfig.from_dict(section)
    assert cfg.patch_size == (1, 2, 2) and cfg.head_dim == 16 and cfg.text_len == 512 and cfg.in_dim == 16
    assert tiny_config("tiny-i2v").in_dim == 36


def test_rope_gives_44_42_42_dims_for_head_dim_128_and_generalises():
    assert rope_pairs(128) == (22, 21, 21)
    for d in (16, 32, 64, 96, 128):
        t, h, w = rope_pairs(d)
        assert t + h + w == d // 2 and h == w == d // 2 // 3


def test_the_model_builds_on_the_meta_device_with_the_official_wan_keys():
    cfg = DiTConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)  # 14B: only possible on meta
    with torch.device("meta"):
        m = WanDiT(cfg)
    keys = m.state_dict().keys()
    assert all(p.is_meta for p in m.parameters())
    for key in ("patch_embedding.weight", "text_embedding.0.weight", "text_embedding.2.bias", "time_embedding.0.weight",
                "time_embedding.2.weight", "time_projection.1.weight", "blocks.39.modulation",
                "blocks.0.self_attn.norm_q.weight", "blocks.0.cross_attn.o.bias", "blocks.0.norm3.weight",
                "blocks.0.ffn.0.weight", "blocks.0.ffn.2.weight", "head.modulation", "head.head.weight",
                "blocks.0.self_attn.attn_op.local_attn.proj_l.weight"):
        assert key in keys, key
    assert m.patch_embedding.weight.shape == (5120, 16, 1, 2, 2)
    assert m.blocks[0].modulation.shape == (1, 6, 5120) and m.head.modulation.shape == (1, 2, 5120)
    assert not any("norm1" in k or "norm2" in k for k in keys)  # affine-free LayerNorms have no weights
    assert sum(p.numel() for p in m.parameters()) > 14e9
    assert build_dit(cfg).blocks[0].self_attn.q.weight.is_meta


def test_forward_maps_latents_to_float32_velocity_of_the_same_grid(model):
    x, t, context = inputs(model.cfg, batch=2)
    with torch.no_grad():
        out = model(x, t, context)
    assert out.shape == (2, model.cfg.out_dim, *x.shape[2:]) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.std() > 0


def test_a_short_context_is_zero_padded_to_text_len(model):
    x, t, context = inputs(model.cfg, batch=1, ctx_len=5)
    padded = torch.cat([context, torch.zeros(1, model.cfg.text_len - 5, model.cfg.text_dim)], dim=1)
    with torch.no_grad():
        assert torch.equal(model(x, t, context), model(x, t, padded))
    with pytest.raises(ValueError, match="text_len"):
        model(x, t, torch.zeros(1, model.cfg.text_len + 1, model.cfg.text_dim))


def test_a_row_gives_bit_identical_frames_alone_or_in_a_batch_of_three(model):
    x, t, context = inputs(model.cfg, batch=3)
    with torch.no_grad():
        batched = model(x, t, context)
        for i in range(3):
            assert torch.equal(model(x[i : i + 1], t[i : i + 1], context[i : i + 1])[0], batched[i]), f"row {i}"


def test_the_timestep_and_the_context_change_the_output(model):
    x, t, context = inputs(model.cfg, batch=1)
    with torch.no_grad():
        base = model(x, t, context)
        assert not torch.allclose(base, model(x, t - 300, context))
        assert not torch.allclose(base, model(x, t, context + 1))


def test_set_attention_sets_every_self_attention_block_and_rejects_unknown_backends():
    m = random_dit(tiny_config(), seed=1)
    m.set_attention("sla_ref", 0.15)
    assert all(b.self_attn.attn_op.backend == "sla_ref" and b.self_attn.attn_op.topk == 0.15 for b in m.blocks)
    m.set_attention("dense")
    assert all(b.self_attn.attn_op.backend == "dense" for b in m.blocks)
    with pytest.raises(ValueError, match="flash"):
        m.set_attention("flash")


def test_sla_projection_stays_float32_when_the_model_is_cast_to_bf16():
    m = random_dit(tiny_config(), seed=1, dtype=torch.bfloat16)
    proj = m.blocks[0].self_attn.attn_op.local_attn.proj_l
    assert m.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert proj.weight.dtype == proj.bias.dtype == torch.float32
    m.to(torch.float16)
    assert proj.weight.dtype == torch.float32


def test_bf16_forward_stays_close_to_float32_with_the_same_weights():
    cfg = tiny_config()
    m32 = random_dit(cfg, seed=7)
    m16 = random_dit(cfg, seed=7, dtype=torch.bfloat16)
    x, t, context = inputs(cfg, batch=2)
    with torch.no_grad():
        a, b = m32(x, t, context), m16(x, t, context)
    assert b.dtype == torch.float32
    assert ((a - b).norm() / a.norm()).item() < 3e-2


def test_a_wrong_channel_count_is_refused(model):
    x, t, context = inputs(model.cfg, batch=1)
    with pytest.raises(ValueError, match="channels"):
        model(x[:, :4], t, context)


def test_sla_reference_backend_runs_a_dit_forward():
    pytest.importorskip("kernels.sla")
    m = random_dit(tiny_config(), seed=3)
    m.set_attention("sla_ref", 0.5)
    x, t, context = inputs(m.cfg, batch=1)
    with torch.no_grad():
        out = m(x, t, context)
    assert out.shape == (1, 16, *x.shape[2:]) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
def test_gpu_bf16_forward_matches_cpu_float32():
    cfg = DiTConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=4, text_dim=128, text_len=64)
    ref = random_dit(cfg, seed=5)
    m = random_dit(cfg, seed=5, device="cuda", dtype=torch.bfloat16)
    x, t, context = inputs(cfg, batch=2, frames=5, height=16, width=24, ctx_len=40)
    with torch.no_grad():
        a = ref(x, t[:2], context)
        b = m(x.cuda(), t[:2].cuda(), context.cuda()).cpu()
    assert ((a - b).norm() / a.norm()).item() < 3e-2


@pytest.mark.gpu
@gpu
def test_gpu_bf16_row_is_bit_identical_alone_or_in_a_batch_of_three():
    cfg = DiTConfig(dim=512, ffn_dim=1024, num_heads=4, num_layers=2, text_dim=256, text_len=128)
    m = random_dit(cfg, seed=5, device="cuda", dtype=torch.bfloat16, on_device=True)
    x, t, context = (u.cuda() for u in inputs(cfg, batch=3, frames=5, height=30, width=52, ctx_len=100))
    with torch.no_grad():
        batched = m(x, t, context)
        for i in range(3):
            assert torch.equal(m(x[i : i + 1], t[i : i + 1], context[i : i + 1])[0], batched[i]), f"row {i}"
