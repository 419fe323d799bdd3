"""Specification of DiT checkpoint loading: every layout users have round-trips, anything else fails loudly."""
from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from turbo_batch.config import load_preset
from turbo_batch.models.checkpoints import CheckpointError
from turbo_batch.models.dit import DiTConfig
from turbo_batch.models.dit_checkpoints import (
    dequantize_int8_blockwise,
    detect_layout,
    load_dit,
    quantize_int8_blockwise,
    random_dit,
    save_turbo_checkpoint,
    save_wan_checkpoint,
)

PROJ_L = ("proj_l.weight", "proj_l.bias")


class NotATensor:
    """Pickled into a .pth to check that loading never unpickles arbitrary objects."""

    def __init__(self):
        self.payload = "x"


@pytest.fixture(scope="module")
def cfg() -> DiTConfig:
    return DiTConfig.from_dict(OmegaConf.to_container(load_preset("tiny-t2v").dit))


@pytest.fixture(scope="module")
def model(cfg):
    return random_dit(cfg, seed=99)


def assert_same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.endswith(skip):
            assert torch.equal(sa[k], sb[k]), k


def test_official_wan_single_safetensors_round_trips_with_zero_proj_l(tmp_path, cfg, model):
    save_wan_checkpoint(model, tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    assert file.is_file()
    for path in (file, tmp_path):  # the file itself, or the directory holding it
        loaded = load_dit(cfg, path, layout="wan", dtype=torch.float32)
        assert_same_weights(model, loaded, skip=PROJ_L)
        assert not loaded.blocks[0].self_attn.attn_op.local_attn.proj_l.weight.any()


def test_official_wan_sharded_safetensors_with_index_round_trip(tmp_path, cfg, model):
    save_wan_checkpoint(model, tmp_path, shard_size_bytes=20_000)
    index = json.loads((tmp_path / "diffusion_pytorch_model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for path in (tmp_path / "diffusion_pytorch_model.safetensors.index.json", tmp_path):
        assert_same_weights(model, load_dit(cfg, path, dtype=torch.float32), skip=PROJ_L)


def test_turbo_pth_round_trips_with_a_linear_patch_embedding_and_proj_l(tmp_path, cfg, model):
    path = save_turbo_checkpoint(model, tmp_path / "turbo.pth")
    raw = torch.load(path, weights_only=True)
    assert raw["patch_embedding.weight"].shape == (cfg.dim, cfg.in_dim * 4)
    assert "blocks.1.self_attn.attn_op.local_attn.proj_l.weight" in raw
    assert detect_layout(raw) == "turbo"
    assert_same_weights(model, load_dit(cfg, path, layout="turbo", dtype=torch.float32))
    assert_same_weights(model, load_dit(cfg, path, dtype=torch.float32))


def test_turbo_patch_embedding_flattens_conv3d_weights_in_c_kt_kh_kw_order(tmp_path, cfg, model):
    raw = torch.load(save_turbo_checkpoint(model, tmp_path / "turbo.pth"), weights_only=True)
    conv = model.patch_embedding.weight
    assert torch.equal(raw["patch_embedding.weight"][:, 1 * 4 + 0 * 2 + 1], conv[:, 1, 0, 0, 1])
    # TurboDiffusion embeds patches with a Linear over rearrange(x, "b c (t kt) (h kh) (w kw) -> b (t h w) (c kt kh kw)")
    x = torch.randn(1, cfg.in_dim, 1, 2, 2)
    w, b = raw["patch_embedding.weight"], raw["patch_embedding.bias"]
    via_linear = torch.nn.functional.linear(x.reshape(1, -1), w, b)
    via_conv = torch.nn.functional.conv3d(x, conv, model.patch_embedding.bias, stride=(1, 2, 2)).flatten(1)
    torch.testing.assert_close(via_linear, via_conv)


def test_turbo_quant_pth_is_dequantized_within_one_tile_step(tmp_path, cfg, model):
    path = save_turbo_checkpoint(model, tmp_path / "turbo-quant.pth", quant=True)
    raw = torch.load(path, weights_only=True)
    assert raw["blocks.0.ffn.0.int8_weight"].dtype == torch.int8 and raw["blocks.0.ffn.0.scale"].shape == (1, 1)
    assert "blocks.0.ffn.0.weight" not in raw and "blocks.0.ffn.0.bias" in raw
    assert "blocks.0.self_attn.attn_op.local_attn.proj_l.weight" in raw  # proj_l is never quantized
    assert "text_embedding.0.weight" in raw and "head.head.weight" in raw  # only Linears inside blocks are
    assert detect_layout(raw) == "turbo-quant"
    loaded = load_dit(cfg, path, dtype=torch.float32)
    assert_same_weights(loaded, load_dit(cfg, path, layout="turbo-quant", dtype=torch.float32))
    for name, p in model.named_parameters():
        q = loaded.get_parameter(name)
        if name.startswith("blocks.") and name.endswith(".weight") and p.ndim == 2 and "proj_l" not in name:
            assert (q - p).abs().max() <= raw[name.replace(".weight", ".scale")].max() * (1 + 1e-5), name
            assert not torch.equal(q, p), name
        else:
            assert torch.equal(q, p), name


def test_int8_blockwise_quantization_is_exact_layout_and_bounded_for_ragged_shapes():
    w = torch.randn(300, 200) * torch.linspace(0.1, 3, 200)
    q, scale = quantize_int8_blockwise(w)
    assert q.shape == (300, 200) and q.dtype == torch.int8 and scale.shape == (3, 2) and scale.dtype == torch.float32
    deq = dequantize_int8_blockwise(q, scale)
    tile_scale = scale.repeat_interleave(128, 0)[:300].repeat_interleave(128, 1)[:, :200]
    assert ((deq - w).abs() <= tile_scale * (1 + 1e-5)).all()  # half a step, one step for the clamped +amax
    assert (deq - w).abs().mean() < 0.3 * tile_scale.mean()
    torch.testing.assert_close(scale[1, 0], w[128:256, :128].abs().max() / 128)
    assert dequantize_int8_blockwise(q, scale, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_net_and_model_prefixes_are_stripped(tmp_path, cfg, model):
    for prefix in ("net.", "model."):
        plain = torch.load(save_turbo_checkpoint(model, tmp_path / "t.pth"), weights_only=True)
        sd = {prefix + k: v for k, v in plain.items()}
        torch.save(sd, tmp_path / "prefixed.pth")
        assert_same_weights(model, load_dit(cfg, tmp_path / "prefixed.pth", dtype=torch.float32))


def test_loading_casts_to_the_requested_dtype_but_keeps_proj_l_float32(tmp_path, cfg, model):
    loaded = load_dit(cfg, save_turbo_checkpoint(model, tmp_path / "t.pth"))
    assert loaded.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert loaded.blocks[0].self_attn.attn_op.local_attn.proj_l.weight.dtype == torch.float32


def test_a_layout_that_does_not_match_the_keys_is_refused(tmp_path, cfg, model):
    turbo = save_turbo_checkpoint(model, tmp_path / "t.pth")
    quant = save_turbo_checkpoint(model, tmp_path / "q.pth", quant=True)
    save_wan_checkpoint(model, tmp_path / "wan")
    for path, layout in ((turbo, "wan"), (turbo, "turbo-quant"), (quant, "turbo"), (tmp_path / "wan", "turbo")):
        with pytest.raises(CheckpointError, match="layout"):
            load_dit(cfg, path, layout=layout)
    with pytest.raises(CheckpointError, match="unknown DiT checkpoint layout"):
        load_dit(cfg, turbo, layout="diffusers")


def edited_turbo_file(tmp_path, model, edit):
    sd = torch.load(save_turbo_checkpoint(model, tmp_path / "t.pth"), weights_only=True)
    edit(sd)
    path = tmp_path / "edited.pth"
    torch.save(sd, path)
    return path


def test_missing_unexpected_and_misshaped_keys_raise_naming_the_keys_and_the_file(tmp_path, cfg, model):
    cases = {
        "missing": lambda sd: sd.pop("blocks.1.cross_attn.k.weight"),
        "unexpected": lambda sd: sd.__setitem__("blocks.0.self_attn.k_img.weight", torch.zeros(2)),
        "mis-shaped": lambda sd: sd.__setitem__("head.head.bias", torch.zeros(3)),
        "proj_l missing in a turbo file": lambda sd: sd.pop("blocks.0.self_attn.attn_op.local_attn.proj_l.bias"),
    }
    names = ["blocks.1.cross_attn.k.weight", "blocks.0.self_attn.k_img.weight", "head.head.bias",
             "blocks.0.self_attn.attn_op.local_attn.proj_l.bias"]
    for (what, edit), key in zip(cases.items(), names):
        path = edited_turbo_file(tmp_path, model, edit)
        with pytest.raises(CheckpointError) as err:
            load_dit(cfg, path)
        assert key in str(err.value) and "edited.pth" in str(err.value), what


def test_a_quant_weight_without_its_scale_is_refused(tmp_path, cfg, model):
    sd = torch.load(save_turbo_checkpoint(model, tmp_path / "q.pth", quant=True), weights_only=True)
    del sd["blocks.0.self_attn.q.scale"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="blocks.0.self_attn.q.scale"):
        load_dit(cfg, tmp_path / "broken.pth")


def test_a_pth_holding_a_pickled_object_is_refused_without_running_it(tmp_path, cfg, model):
    sd = torch.load(save_turbo_checkpoint(model, tmp_path / "t.pth"), weights_only=True)
    sd["extra"] = NotATensor()
    torch.save(sd, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_dit(cfg, tmp_path / "evil.pth")


def test_a_missing_file_is_a_checkpoint_error(tmp_path, cfg):
    with pytest.raises(CheckpointError, match="nope.safetensors"):
        load_dit(cfg, tmp_path / "nope.safetensors")


def test_a_loaded_i2v_expert_computes_the_same_velocity_as_the_saved_one(tmp_path):
    cfg = DiTConfig.from_dict(OmegaConf.to_container(load_preset("tiny-i2v").dit))
    model = random_dit(cfg, seed=4321)
    loaded = load_dit(cfg, save_turbo_checkpoint(model, tmp_path / "i2v.pth"), dtype=torch.float32)
    x, t, c = torch.randn(1, 36, 3, 8, 8), torch.tensor([900.0]), torch.randn(1, 16, cfg.text_dim)
    with torch.no_grad():
        assert torch.equal(model(x, t, c), loaded(x, t, c))
