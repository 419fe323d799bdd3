"""The Wan2.1 causal 3D VAE: shapes, causality, batch independence, meta construction, strict official-layout
checkpoints. Tiny config (base_dim 8, one res block, float32) on CPU; GPU checks at the end."""
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from turbo_batch.models.checkpoints import CheckpointError
from turbo_batch.models.vae import (
    LATENT_MEAN,
    LATENT_STD,
    Resample,
    VAEConfig,
    WanVAE,
    build_vae,
    load_vae,
    random_vae,
    save_wan_vae,
)

TINY_PRESET = Path(__file__).resolve().parent.parent / "conf" / "models" / "tiny-t2v.yaml"
H, W = 16, 32


@pytest.fixture(scope="module")
def tiny_cfg() -> VAEConfig:
    return VAEConfig.from_dict(OmegaConf.load(TINY_PRESET).vae)


@pytest.fixture(scope="module")
def vae(tiny_cfg) -> WanVAE:
    return random_vae(tiny_cfg, seed=7)


def video(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, frames, H, W), generator=g) * 2 - 1


def latent(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, 16, frames, H // 8, W // 8), generator=g)


# ------------------------------------------------------------------------------------------- config
def test_config_reads_the_tiny_preset_and_ignores_unknown_keys(tiny_cfg):
    assert tiny_cfg == VAEConfig(base_dim=8, num_res_blocks=1)
    assert VAEConfig.from_dict({"base_dim": 16, "not_a_field": 1, "dim_mult": [1, 2]}) == VAEConfig(base_dim=16, dim_mult=(1, 2))
    assert VAEConfig() == VAEConfig(96, (1, 2, 4, 4), 2, (False, True, True), 16, 0.0)


def test_latent_statistics_are_wans_for_z16_and_identity_otherwise():
    assert VAEConfig().latent_mean == LATENT_MEAN and VAEConfig().latent_std == LATENT_STD
    assert len(LATENT_MEAN) == len(LATENT_STD) == 16
    assert VAEConfig(z_dim=4).latent_mean == (0.0,) * 4 and VAEConfig(z_dim=4).latent_std == (1.0,) * 4


# ------------------------------------------------------------------------------------------- structure
def test_real_size_vae_builds_on_meta_with_the_official_parameter_names_and_shapes():
    model = build_vae()
    sd = model.state_dict()
    assert all(t.device.type == "meta" for t in sd.values())
    assert len(sd) == 194
    assert sum(t.numel() for t in sd.values()) == 126_892_531  # Wan2.1_VAE.pth: ~508 MB of float32
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.middle.1.norm.gamma": (384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3),
        "conv1.weight": (32, 32, 1, 1, 1),
        "conv2.weight": (16, 16, 1, 1, 1),
        "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.middle.2.residual.6.weight": (384, 384, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3),
        "decoder.head.0.gamma": (96, 1, 1, 1),
        "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "decoder.upsamples.11.time_conv.weight" not in sd  # the last upsampler is spatial only


def test_random_weights_are_deterministic_per_seed(tiny_cfg):
    a, b, c = random_vae(tiny_cfg, seed=3), random_vae(tiny_cfg, seed=3), random_vae(tiny_cfg, seed=4)
    for (k, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, y), k
    assert not all(torch.equal(x, z) for x, z in zip(a.state_dict().values(), c.state_dict().values()))


# ------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_and_decode_give_wan_shapes_in_float32(vae, frames):
    z = vae.encode(video(frames))
    t = 1 + (frames - 1) // 4
    assert z.shape == (1, 16, t, H // 8, W // 8) and z.dtype == torch.float32
    x = vae.decode(z)
    assert x.shape == (1, 3, frames, H, W) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1


def test_encode_decode_round_trip_runs_on_a_batch(vae):
    clip = video(9, batch=2)
    rec = vae.decode(vae.encode(clip))
    assert rec.shape == clip.shape and torch.isfinite(rec).all()


def test_encode_ignores_frames_past_the_last_full_chunk_like_the_official(vae):
    clip = video(11)
    assert torch.equal(vae.encode(clip), vae.encode(clip[:, :, :9]))


def test_bad_shapes_are_rejected_with_a_clear_message(vae):
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 1, 30, 32))
    with pytest.raises(ValueError, match="decode expects"):
        vae.decode(torch.zeros(1, 4, 1, 4, 6))


# ------------------------------------------------------------------------------------------- semantics
def test_a_batch_of_two_equals_two_singles_bitwise(vae):
    clip = video(5, batch=2, seed=1)
    z = vae.encode(clip)
    assert torch.equal(z[0:1], vae.encode(clip[0:1])) and torch.equal(z[1:2], vae.encode(clip[1:2]))
    zz = latent(3, batch=2, seed=2)
    x = vae.decode(zz)
    assert torch.equal(x[0:1], vae.decode(zz[0:1])) and torch.equal(x[1:2], vae.decode(zz[1:2]))


def test_decode_is_causal_earlier_frames_do_not_see_later_latents(vae):
    z = latent(3, seed=3)
    assert torch.equal(vae.decode(z)[:, :, :5], vae.decode(z[:, :, :2]))
    z2 = z.clone()
    z2[:, :, 2] += 1.0
    assert torch.equal(vae.decode(z)[:, :, :5], vae.decode(z2)[:, :, :5])


def test_encode_is_causal_a_prefix_encodes_to_a_prefix(vae):
    clip = video(9, seed=4)
    assert torch.equal(vae.encode(clip)[:, :, :2], vae.encode(clip[:, :, :5]))


def test_calls_leave_no_state_behind_so_interleaved_calls_agree(vae):
    attrs = {id(m): set(vars(m)) for m in vae.modules()}
    z1, z2 = latent(3, seed=5), latent(2, seed=6)
    first = vae.decode(z1)
    vae.decode(z2)
    vae.encode(video(5))
    assert torch.equal(vae.decode(z1), first)
    assert {id(m): set(vars(m)) for m in vae.modules()} == attrs


def test_concurrent_calls_on_one_model_do_not_interfere(vae):
    import threading

    latents = [latent(3, seed=s) for s in (30, 31)]
    expected = [vae.decode(z) for z in latents]
    results: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, vae.decode(latents[i]))) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(2):
        assert torch.allclose(results[i], expected[i], atol=1e-6)


@pytest.mark.parametrize("frames", [1, 2])
def test_a_causal_conv_moves_its_buffers_last_frames_to_its_head_for_the_next_chunk(frames):
    from turbo_batch.models.vae import CausalCache, CausalConv3d

    conv = CausalConv3d(4, 4, 3, padding=1)
    cache = CausalCache()
    chunks = [torch.randn(1, 4, frames, 3, 5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    with torch.no_grad():
        conv(chunks[0], cache)
        first = cache.frames[conv]
        assert torch.equal(first[:, :, :2], torch.zeros_like(first[:, :, :2]))  # zeros before the clip starts
        tail = first[:, :, -2:].clone()
        conv(chunks[1], cache)
        held = cache.frames[conv]
    assert torch.equal(held[:, :, :2], tail) and torch.equal(held[:, :, 2:], chunks[1])
    # a chunk of at least two frames reuses the previous buffer in place; a one-frame chunk cannot (its old tail
    # overlaps its new head) and takes a fresh one
    assert (held.data_ptr() == first.data_ptr()) == (frames >= 2)


@pytest.mark.parametrize("reuse", [False, True])
def test_reusing_the_padded_buffers_changes_no_bit_of_encode_or_decode(vae, monkeypatch, reuse):
    from turbo_batch.models import vae as V

    z, clip = latent(4, seed=40), video(9, seed=41)
    expected = vae.decode(z), vae.encode(clip)
    monkeypatch.setattr(V, "REUSE_PADDED_BUFFERS", reuse)
    got = vae.decode(z), vae.encode(clip)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_normalisation_is_applied_inside_encode_and_undone_inside_decode(tiny_cfg):
    """With z_dim 16, encode returns (mu - mean) / std: shifting mu by `mean` in the conv bias shows it."""
    model = random_vae(tiny_cfg, seed=1)
    clip = video(1, seed=8)
    z = model.encode(clip)
    with torch.no_grad():
        model.conv1.bias[:16] += torch.tensor(LATENT_STD)  # mu -> mu + std  =>  z -> z + 1
    assert torch.allclose(model.encode(clip), z + 1, atol=1e-5)


def test_channels_last_layout_computes_the_same_as_ncdhw(tiny_cfg):
    model = random_vae(tiny_cfg, seed=19)
    z, clip = latent(2, seed=20), video(5, seed=21)
    plain_x, plain_z = model.decode(z), model.encode(clip)
    model.channels_last = True
    try:
        fast_x, fast_z = model.decode(z), model.encode(clip)
    finally:
        model.channels_last = None
    assert torch.allclose(fast_x, plain_x, atol=1e-5) and torch.allclose(fast_z, plain_z, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_upsampler_convolves_the_low_resolution_frames_to_the_same_sums_as_upsample_then_conv(channels_last):
    """Nearest 2x + 3x3 conv (the official order) and the 2x2 sub-pixel conv agree to float64 rounding, every phase
    and edge pixel included, in either layout."""
    up = Resample(6, "upsample2d").double()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=fmt)
    fast = up._upsample_conv(x)
    assert fast.shape == (2, 3, 10, 14) and fast.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(fast, up.resample(x), rtol=1e-12, atol=1e-12)


def test_the_sub_pixel_weights_follow_the_conv_when_its_weights_change():
    up = Resample(4, "upsample2d")
    x = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(2))
    up._upsample_conv(x)
    with torch.no_grad():
        up.resample[1].weight.mul_(-2.0)
    torch.testing.assert_close(up._upsample_conv(x), up.resample(x), rtol=1e-5, atol=1e-5)
    assert "_subpixel" not in str(up.state_dict().keys())


def test_decoding_with_sub_pixel_upsamplers_matches_the_official_order_in_float32(tiny_cfg, monkeypatch):
    from turbo_batch.models import vae as V

    model, z = random_vae(tiny_cfg, seed=23), latent(3, seed=24)
    fast = model.decode(z)
    monkeypatch.setattr(V, "SUBPIXEL_UPSAMPLE", False)
    plain = model.decode(z)
    assert ((fast - plain).norm() / plain.norm()).item() < 1e-5


# ------------------------------------------------------------------------------------------- checkpoints
def test_the_vae_asks_cudnn_for_its_mode_b_kernel_heuristic_unless_the_user_chose_otherwise():
    """Set before any conv runs (PyTorch reads it once): a deterministic choice of faster sm90 conv kernels."""
    import subprocess
    import sys

    code = "import os, turbo_batch.models.vae; print(os.environ['TORCH_CUDNN_USE_HEURISTIC_MODE_B'])"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_CUDNN_USE_HEURISTIC_MODE_B"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "1"
    env["TORCH_CUDNN_USE_HEURISTIC_MODE_B"] = "0"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "0"


FOLDED_BIAS_SCRIPT = r"""
import json, torch
from omegaconf import OmegaConf
from turbo_batch.models import vae as V
cfg = V.VAEConfig.from_dict(OmegaConf.load("conf/models/tiny-t2v.yaml").vae)
model = V.random_vae(cfg, seed=3)
model.channels_last = True  # the layout the kernels read; on CPU the interpreter runs them
z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(4))
folded = model.decode(z)
V.FOLD_CONV_BIAS = False
plain = model.decode(z)
print("RESULT" + json.dumps({"rel": ((folded - plain).norm() / plain.norm()).item(), "shape": list(folded.shape)}))
"""


def test_on_the_kernel_path_a_residual_blocks_conv_biases_ride_in_its_norm_and_residual_passes():
    """Interpreted on CPU in float32 (a conv adds its bias inside its sum there, so within float32 rounding; on the
    GPU, where PyTorch adds it after cuDNN's conv, the same bits: the GPU test below)."""
    from _helpers import run_interpreted

    got = run_interpreted(FOLDED_BIAS_SCRIPT, timeout=300)
    assert got["shape"] == [1, 3, 9, 32, 32] and got["rel"] < 1e-5


def test_official_layout_checkpoint_round_trip_gives_identical_outputs(vae, tiny_cfg, tmp_path):
    path = tmp_path / "Wan2.1_VAE.pth"
    save_wan_vae(vae, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == set(vae.state_dict()) and all(isinstance(v, torch.Tensor) for v in raw.values())
    loaded = load_vae(path, tiny_cfg)
    z = latent(2, seed=9)
    assert torch.equal(loaded.decode(z), vae.decode(z))
    clip = video(5, seed=10)
    assert torch.equal(loaded.encode(clip), vae.encode(clip))


def test_load_vae_casts_to_the_requested_dtype(vae, tiny_cfg, tmp_path):
    path = tmp_path / "vae.pth"
    save_wan_vae(vae, path)
    assert all(p.dtype == torch.bfloat16 for p in load_vae(path, tiny_cfg, dtype=torch.bfloat16).parameters())


@pytest.mark.parametrize("damage", ["missing", "extra", "misshaped"])
def test_a_bad_checkpoint_key_raises_naming_the_key_and_the_file(vae, tiny_cfg, tmp_path, damage):
    sd = {k: v.clone() for k, v in vae.state_dict().items()}
    key = "decoder.upsamples.2.time_conv.weight"  # tiny: num_res_blocks 1 -> the first upsample3d is index 2
    assert key in sd
    if damage == "missing":
        del sd[key]
    elif damage == "extra":
        key = "decoder.upsamples.2.time_conv.scale"
        sd[key] = torch.zeros(1)
    else:
        sd[key] = sd[key][:, :, :2]
    path = tmp_path / f"broken_{damage}.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as err:
        load_vae(path, tiny_cfg)
    assert key in str(err.value) and str(path) in str(err.value)


def test_a_tiny_file_does_not_load_into_the_real_size_config(vae, tmp_path):
    path = tmp_path / "tiny.pth"
    save_wan_vae(vae, path)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_vae(path)  # default (real-size) config


# ------------------------------------------------------------------------------------------- GPU
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error (bf16 rounding makes max-relative errors noisy)."""
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@gpu
def test_gpu_float32_matches_cpu_and_bfloat16_stays_close(tiny_cfg, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cpu = random_vae(tiny_cfg, seed=11)
    fp32 = random_vae(tiny_cfg, seed=11, device="cuda")
    bf16 = random_vae(tiny_cfg, seed=11, device="cuda", dtype=torch.bfloat16)
    clip, z = video(9, seed=12), latent(3, seed=13)
    ref_z, ref_x = cpu.encode(clip), cpu.decode(z)
    assert _rel(fp32.encode(clip).cpu(), ref_z) < 1e-4
    assert _rel(fp32.decode(z).cpu(), ref_x) < 1e-4
    assert _rel(bf16.encode(clip).cpu(), ref_z) < 5e-2
    assert _rel(bf16.decode(z).cpu(), ref_x) < 5e-2


@pytest.mark.gpu
@gpu
def test_gpu_decode_is_deterministic_and_batch_independent_bitwise(tiny_cfg):
    model = random_vae(tiny_cfg, seed=14, device="cuda", dtype=torch.bfloat16)
    z = latent(3, batch=2, seed=15).cuda()
    a, b = model.decode(z), model.decode(z)
    assert torch.equal(a, b)
    assert torch.equal(a[1:2], model.decode(z[1:2]))
    clip = video(5, batch=2, seed=16).cuda()
    e = model.encode(clip)
    assert torch.equal(e, model.encode(clip)) and torch.equal(e[0:1], model.encode(clip[0:1]))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("switch", ["FOLD_CONV_BIAS", "REUSE_PADDED_BUFFERS"])
def test_gpu_switches_that_only_move_work_change_no_bit(monkeypatch, switch):
    """Real-size VAE (every channel width), bf16, a 3-frame latent at 240x416, on the kernel path: the residual blocks'
    conv biases left to the elementwise passes, the padded buffers reused from chunk to chunk."""
    from turbo_batch.models import vae as V

    model = random_vae(VAEConfig(), seed=19, device="cuda", dtype=torch.bfloat16)
    z = torch.randn(1, 16, 3, 30, 52, generator=torch.Generator().manual_seed(20)).cuda()
    default = model.decode(z)
    monkeypatch.setattr(V, switch, not getattr(V, switch))
    assert torch.equal(default, model.decode(z))


@pytest.mark.gpu
@gpu
def test_gpu_the_middle_attention_runs_on_a_fused_sdpa_kernel_not_the_float32_math_fallback():
    """SDPA takes its memory-efficient kernel only for rows with a unit-stride channel dim (2.6x the math kernel)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from turbo_batch.models.vae import AttentionBlock

    block = AttentionBlock(64).cuda().bfloat16()
    x = torch.randn(1, 64, 1, 12, 20, device="cuda", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last_3d)
    with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # raises if the inputs are not eligible
        fused = block(x)
    with sdpa_kernel([SDPBackend.MATH]):
        plain = block(x)
    assert _rel(fused, plain) < 1e-2


@pytest.mark.gpu
@gpu
def test_gpu_channels_last_and_ncdhw_layouts_agree(tiny_cfg):
    model = random_vae(tiny_cfg, seed=17, device="cuda", dtype=torch.bfloat16)
    z = latent(3, seed=18).cuda()
    fast = model.decode(z)  # default on CUDA: channels-last
    model.channels_last = False
    plain = model.decode(z)
    model.channels_last = None
    assert _rel(fast, plain) < 1e-2
