"""Build diffusers' `WanTransformer3DModel` holding exactly our DiT's weights (for parity tests).

The key mapping itself lives in `turbo_batch.models.dit_checkpoints.to_diffusers_state_dict` so that the GPU
benchmark uses the same one; this helper adds only what a test needs around it.
"""
from __future__ import annotations

import torch

from turbo_batch.models.dit import WanDiT
from turbo_batch.models.dit_checkpoints import diffusers_config, to_diffusers_state_dict


def diffusers_twin(model: WanDiT):
    """A diffusers WanTransformer3DModel (float32, CPU, eval) loaded strictly with `model`'s weights."""
    from diffusers import WanTransformer3DModel

    twin = WanTransformer3DModel(**diffusers_config(model.cfg))
    twin.load_state_dict(to_diffusers_state_dict(model.state_dict()), strict=True)
    return twin.to(torch.float32).eval()


def padded_context(context: torch.Tensor, text_len: int) -> torch.Tensor:
    """The zero-padded text context our DiT builds internally, for models that do not pad."""
    return torch.nn.functional.pad(context, (0, 0, 0, text_len - context.shape[1]))
