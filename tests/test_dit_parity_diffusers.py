"""Our DiT equals diffusers' WanTransformer3DModel (an independent implementation of Wan) on identical weights."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from turbo_batch.config import load_preset
from turbo_batch.models.dit import DiTConfig
from turbo_batch.models.dit_checkpoints import diffusers_key, random_dit, to_diffusers_state_dict

pytest.importorskip("diffusers")
from _dit_diffusers_keys import diffusers_twin, padded_context  # noqa: E402


def tiny(preset: str) -> DiTConfig:
    return DiTConfig.from_dict(OmegaConf.to_container(load_preset(preset).dit))


@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v"])
def test_every_key_maps_to_a_distinct_diffusers_key_and_only_proj_l_has_none(preset):
    from diffusers import WanTransformer3DModel
    from turbo_batch.models.dit_checkpoints import diffusers_config

    model = random_dit(tiny(preset), seed=1)
    ours = list(model.state_dict())
    mapped = {k: diffusers_key(k) for k in ours}
    assert {k for k, v in mapped.items() if v is None} == {k for k in ours if "proj_l" in k}
    targets = [v for v in mapped.values() if v is not None]
    assert len(targets) == len(set(targets))  # injective
    with torch.device("meta"):
        theirs = WanTransformer3DModel(**diffusers_config(model.cfg)).state_dict().keys()
    assert set(targets) == set(theirs)  # onto
    assert mapped["blocks.0.norm3.weight"] == "blocks.0.norm2.weight"  # diffusers' norm2/norm3 are swapped
    sd = model.state_dict()
    assert to_diffusers_state_dict(sd)["proj_out.weight"] is sd["head.head.weight"]  # renamed, not copied
    with pytest.raises(KeyError):
        diffusers_key("blocks.0.self_attn.k_img.weight")


@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v"])
def test_float32_output_matches_diffusers_to_1e_4(preset):
    cfg = tiny(preset)
    model = random_dit(cfg, seed=2024).eval()
    twin = diffusers_twin(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, cfg.in_dim, 3, 8, 12, generator=g)
    t = torch.tensor([937.5, 125.0])
    context = torch.randn(2, 11, cfg.text_dim, generator=g)
    with torch.no_grad():
        ours = model(x, t, context)
        theirs = twin(x, t, padded_context(context, cfg.text_len), return_dict=False)[0]
    assert theirs.shape == ours.shape
    assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 1e-4
