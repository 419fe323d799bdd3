"""Our Wan VAE equals diffusers' AutoencoderKLWan on identical weights, through `to_diffusers_state_dict`.

diffusers' encode returns the unnormalised posterior; we compare its mode (mean) with our normalisation undone.
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLWan  # noqa: E402
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers  # noqa: E402

from turbo_batch.models.vae import VAEConfig, build_vae, random_vae, to_diffusers_state_dict  # noqa: E402

TINY = VAEConfig(base_dim=8, num_res_blocks=1)
H, W = 32, 48


def diffusers_vae(cfg: VAEConfig, device="cpu") -> AutoencoderKLWan:
    with torch.device(device):
        return AutoencoderKLWan(
            base_dim=cfg.base_dim, z_dim=cfg.z_dim, dim_mult=list(cfg.dim_mult), num_res_blocks=cfg.num_res_blocks,
            temperal_downsample=list(cfg.temporal_downsample), dropout=cfg.dropout,
            latents_mean=list(cfg.latent_mean), latents_std=list(cfg.latent_std),
        ).eval().requires_grad_(False)


def stats(cfg: VAEConfig, device="cpu"):
    mean = torch.tensor(cfg.latent_mean, device=device).view(1, -1, 1, 1, 1)
    std = torch.tensor(cfg.latent_std, device=device).view(1, -1, 1, 1, 1)
    return mean, std


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.fixture(scope="module")
def pair():
    ours = random_vae(TINY, seed=21)
    theirs = diffusers_vae(TINY)
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    return ours, theirs


# ------------------------------------------------------------------------------------------- key mapping
@pytest.mark.parametrize("cfg", [TINY, VAEConfig()], ids=["tiny", "real-size"])
def test_key_mapping_covers_every_key_and_is_a_bijection_onto_diffusers(cfg):
    ours = build_vae(cfg).state_dict()
    theirs = diffusers_vae(cfg, device="meta").state_dict()
    mapped = to_diffusers_state_dict(ours)
    assert len(mapped) == len(ours)  # injective: no two of our keys land on one diffusers key
    assert set(mapped) == set(theirs)  # onto: every diffusers key is produced
    for k, v in mapped.items():
        assert v.shape == theirs[k].shape, k


def test_key_mapping_agrees_with_diffusers_own_converter_at_real_size():
    ours = build_vae().state_dict()
    assert to_diffusers_state_dict(ours).keys() == convert_wan_vae_to_diffusers(dict(ours)).keys()
    theirs = convert_wan_vae_to_diffusers(dict(ours))
    assert all(to_diffusers_state_dict(ours)[k] is theirs[k] for k in theirs)


def test_key_mapping_rejects_an_unknown_key():
    with pytest.raises(KeyError, match="unknown"):
        to_diffusers_state_dict({"decoder.upsamples.0.residual.0.gamma": torch.ones(1), "mystery.weight": torch.ones(1)}, num_res_blocks=1)


# ------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("frames", [1, 5, 9])
def test_encode_matches_diffusers_posterior_mean(pair, frames):
    ours, theirs = pair
    clip = torch.rand((1, 3, frames, H, W), generator=torch.Generator().manual_seed(frames)) * 2 - 1
    z = ours.encode(clip)
    with torch.no_grad():
        mu = theirs.encode(clip).latent_dist.mode()
    mean, std = stats(TINY)
    assert z.shape == mu.shape
    assert rel_err(z * std + mean, mu) < 1e-4


@pytest.mark.parametrize("frames", [1, 5, 9])
def test_decode_matches_diffusers(pair, frames):
    ours, theirs = pair
    t = 1 + (frames - 1) // 4
    z = torch.randn((1, 16, t, H // 8, W // 8), generator=torch.Generator().manual_seed(100 + frames))
    mean, std = stats(TINY)
    x = ours.decode(z)
    with torch.no_grad():
        ref = theirs.decode(z * std + mean).sample
    assert x.shape == ref.shape == (1, 3, frames, H, W)
    assert rel_err(x, ref) < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bfloat16_is_as_accurate_as_diffusers_bfloat16(monkeypatch):
    """Both bf16 models against the float32 reference: ours must not be noticeably less accurate."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    reference = random_vae(TINY, seed=22, device="cuda")
    ours = random_vae(TINY, seed=22, device="cuda", dtype=torch.bfloat16)
    theirs = diffusers_vae(TINY, device="cuda").to(torch.bfloat16)
    theirs.load_state_dict(to_diffusers_state_dict(ours.state_dict()), strict=True)
    mean, std = stats(TINY, "cuda")

    def rel_l2(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    z = torch.randn((1, 16, 5, 16, 24), generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    ref = reference.decode(z)
    with torch.no_grad():
        theirs_x = theirs.decode((z * std + mean).bfloat16()).sample
    ours_err, theirs_err = rel_l2(ours.decode(z), ref), rel_l2(theirs_x, ref)
    assert ours_err < 5e-2 and ours_err <= 1.5 * theirs_err + 1e-3, (ours_err, theirs_err)

    clip = ref[:, :, :9].clone()
    ref_mu = reference.encode(clip) * std + mean
    with torch.no_grad():
        theirs_mu = theirs.encode(clip.bfloat16()).latent_dist.mode()
    ours_err, theirs_err = rel_l2(ours.encode(clip) * std + mean, ref_mu), rel_l2(theirs_mu, ref_mu)
    assert ours_err < 5e-2 and ours_err <= 1.5 * theirs_err + 1e-3, (ours_err, theirs_err)
