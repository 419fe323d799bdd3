"""Building, loading and writing Wan DiT checkpoints in the three layouts users have.

- `wan`: official Wan-AI `diffusion_pytorch_model*.safetensors` (one file, sharded with an index json, or a
  directory). Our parameter names ARE these keys; no SLA `proj_l` (zero-filled on load).
- `turbo`: TurboDiffusion `.pth`, a flat dict of tensors with `proj_l` keys and the patch embedding stored as a
  Linear weight [dim, in_dim*kt*kh*kw].
- `turbo-quant`: as `turbo`, but every Linear inside `blocks` except `proj_l` is stored as `int8_weight`
  [out, in] int8 + `scale` [ceil(out/128), ceil(in/128)] fp32 (w = int8 * scale per 128x128 tile) + `bias`;
  dequantized here on load.
A `net.`/`model.` key prefix (training checkpoints) is stripped. Every load is strict (checkpoints.load_strict).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import (
    CheckpointError,
    load_strict,
    materialize_,
    random_init_,
    read_state_dict,
    save_safetensors_atomic,
)
from .dit import DiTConfig, WanDiT

LAYOUTS = ("auto", "wan", "turbo", "turbo-quant", "fp8")
PROJ_L = ("proj_l.weight", "proj_l.bias")
QUANT_BLOCK = 128


def _config(cfg: DiTConfig | Mapping) -> DiTConfig:
    return cfg if isinstance(cfg, DiTConfig) else DiTConfig.from_dict(cfg)


def build_dit(cfg: DiTConfig | Mapping, device: torch.device | str = "meta") -> WanDiT:
    """The network with no weights (meta) or uninitialised storage on `device`."""
    with torch.device(device):
        return WanDiT(_config(cfg))


def random_dit(
    cfg: DiTConfig | Mapping,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    on_device: bool = False,
) -> WanDiT:
    """Deterministic random weights from `seed` (tiny presets, real-size benchmarks); proj_l stays float32."""
    model = build_dit(cfg).to(dtype)  # cast on meta: no full-precision copy of a 14B model is ever made
    materialize_(model, device)
    return random_init_(model, seed, on_device=on_device)


# ------------------------------------------------------------------------------------------------ int8 tiles
def quantize_int8_blockwise(w: torch.Tensor, block: int = QUANT_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """TurboDiffusion's W8 layout: int8 [out, in] and one fp32 scale (tile amax / 128) per block x block tile."""
    out_f, in_f = w.shape
    rows, cols = math.ceil(out_f / block), math.ceil(in_f / block)
    tiles = F.pad(w.float(), (0, cols * block - in_f, 0, rows * block - out_f)).view(rows, block, cols, block)
    scale = tiles.abs().amax(dim=(1, 3)) / 128
    q = torch.round(tiles / scale.clamp_min(torch.finfo(torch.float32).tiny)[:, None, :, None]).clamp(-128, 127)
    return q.to(torch.int8).view(rows * block, cols * block)[:out_f, :in_f].contiguous(), scale


def dequantize_int8_blockwise(
    int8_weight: torch.Tensor, scale: torch.Tensor, block: int = QUANT_BLOCK, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """w = int8 * scale of its block x block tile, computed in float32 and returned in `dtype`."""
    out_f, in_f = int8_weight.shape
    s = scale.float().repeat_interleave(block, 0)[:out_f].repeat_interleave(block, 1)[:, :in_f]
    return (int8_weight.float() * s).to(dtype)


# ------------------------------------------------------------------------------------------------ loading
def _strip_prefix(sd: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    for prefix in ("net.", "model."):
        if any(k.startswith(prefix) for k in sd):
            out = {}
            for k, v in sd.items():
                new = k[len(prefix):] if k.startswith(prefix) else k
                if new in out:
                    raise CheckpointError(f"{source}: key {k!r} collides with {new!r} after stripping {prefix!r}")
                out[new] = v
            sd = out
    return sd


def detect_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """`fp8` if saved from our FP8 model, `turbo-quant` if any int8 weights, `turbo` if the patch embedding is a
    2-D Linear weight, else `wan`."""
    if any(k.endswith(".weight_scale") for k in sd):
        return "fp8"
    if any(k.endswith(".int8_weight") for k in sd):
        return "turbo-quant"
    patch = sd.get("patch_embedding.weight")
    if patch is not None and patch.ndim == 2:
        return "turbo"
    return "wan"


def _dequantize_all(sd: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for key in [k for k in sd if k.endswith(".int8_weight")]:
        base = key[: -len(".int8_weight")]
        q, scale = out.pop(key), out.pop(base + ".scale", None)
        if scale is None:
            raise CheckpointError(f"{source}: {key} has no matching {base}.scale")
        want = (math.ceil(q.shape[0] / QUANT_BLOCK), math.ceil(q.shape[1] / QUANT_BLOCK))
        if q.dtype != torch.int8 or q.ndim != 2 or tuple(scale.shape) != want:
            raise CheckpointError(
                f"{source}: {key} {q.dtype} {tuple(q.shape)} with scale {tuple(scale.shape)} is not int8 [out, in] "
                f"with {QUANT_BLOCK}x{QUANT_BLOCK}-tile scales {want}")
        out[base + ".weight"] = dequantize_int8_blockwise(q, scale, dtype=dtype)
    return out


def load_dit(
    cfg: DiTConfig | Mapping,
    path: str | Path,
    layout: str = "auto",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
) -> WanDiT:
    """A WanDiT filled from a checkpoint in `layout` (see module docstring); raises CheckpointError naming
    the file and every missing, unexpected or mis-shaped key."""
    if layout not in LAYOUTS:
        raise CheckpointError(f"{path}: unknown DiT checkpoint layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    cfg = _config(cfg)
    source = str(path)
    sd = _strip_prefix(dict(read_state_dict(path)), source)
    detected = detect_layout(sd)
    if layout != "auto" and layout != detected:
        raise CheckpointError(
            f"{source}: layout {layout!r} was requested but the keys are those of a {detected!r} checkpoint")
    if detected == "fp8":  # written by `turbo-batch convert-fp8`: load as is, no re-quantization
        from .quantize import load_fp8_into_

        return load_fp8_into_(build_dit(cfg), sd, source, device=device)
    if detected == "turbo-quant":
        sd = _dequantize_all(sd, source, dtype)
    if detected != "wan":
        # TurboDiffusion patchifies with rearrange("b c (t kt) (h kh) (w kw) -> b (t h w) (c kt kh kw)") and a
        # Linear (thu-ml/TurboDiffusion turbodiffusion/rcm/networks/wan2pt1.py and wan2pt2.py, WanModel.forward),
        # and its inference/modify_model.py converts Wan's Conv3d weight with a plain reshape. The (c, kt, kh, kw)
        # flattening is exactly Conv3d's [dim, c, kt, kh, kw] memory order, so the inverse is a plain view.
        w = sd.get("patch_embedding.weight")
        if w is not None and w.ndim == 2 and w.shape == (cfg.dim, cfg.in_dim * math.prod(cfg.patch_size)):
            sd["patch_embedding.weight"] = w.reshape(cfg.dim, cfg.in_dim, *cfg.patch_size)
    model = build_dit(cfg)
    return load_strict(model, sd, source, allow_missing=PROJ_L if detected == "wan" else (), device=device,
                       dtype=dtype, keep_fp32=PROJ_L)


# ------------------------------------------------------------------------------------------------ writing
def _cpu_state_dict(model: WanDiT) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def save_turbo_checkpoint(model: WanDiT, path: str | Path, quant: bool = False) -> Path:
    """Write TurboDiffusion's `.pth` layout (flat tensor dict; `quant=True`: the `-quant` int8 layout)."""
    sd = _cpu_state_dict(model)
    sd["patch_embedding.weight"] = sd["patch_embedding.weight"].flatten(1).clone()
    if quant:
        for name, module in model.blocks.named_modules():
            if isinstance(module, nn.Linear) and "proj_l" not in name:
                key = f"blocks.{name}"
                sd[key + ".int8_weight"], sd[key + ".scale"] = quantize_int8_blockwise(sd.pop(key + ".weight"))
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


def save_wan_checkpoint(model: WanDiT, directory: str | Path, shard_size_bytes: int | None = None,
                        include_proj_l: bool = False) -> Path:
    """Write the official Wan layout into `directory`: one `diffusion_pytorch_model.safetensors`, or shards of
    at most `shard_size_bytes` plus `diffusion_pytorch_model.safetensors.index.json`. Official files carry no
    SLA `proj_l`; `include_proj_l=True` keeps them."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in _cpu_state_dict(model).items() if include_proj_l or not k.endswith(PROJ_L)}
    stem = "diffusion_pytorch_model"
    if shard_size_bytes is None:
        save_safetensors_atomic(sd, directory / f"{stem}.safetensors")
        return directory
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in sd.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > shard_size_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.safetensors"
        save_safetensors_atomic(shard, directory / name)
        weight_map.update({k: name for k in shard})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    index = directory / f"{stem}.safetensors.index.json"
    tmp = index.with_name(index.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    os.replace(tmp, index)
    return directory


# ------------------------------------------------------------------------------------------------ diffusers
_DIFFUSERS_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}
_DIFFUSERS_BLOCK = {
    **{f"{ours}.{p}": f"{theirs}.to_{p}"
       for ours, theirs in (("self_attn", "attn1"), ("cross_attn", "attn2")) for p in "qkv"},
    "self_attn.o": "attn1.to_out.0",
    "cross_attn.o": "attn2.to_out.0",
    "self_attn.norm_q": "attn1.norm_q",
    "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.norm_q": "attn2.norm_q",
    "cross_attn.norm_k": "attn2.norm_k",
    "norm3": "norm2",  # diffusers numbers the norms in call order: our norm3 (cross-attn) is its norm2
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}


def diffusers_key(key: str) -> str | None:
    """The diffusers `WanTransformer3DModel` name of one of our keys; None for SLA's proj_l (no counterpart)."""
    if key == "head.modulation":
        return "scale_shift_table"
    if key.startswith("blocks."):
        _, index, rest = key.split(".", 2)
        if rest == "modulation":
            return f"blocks.{index}.scale_shift_table"
        if rest.endswith(PROJ_L):
            return None
        module, param = rest.rsplit(".", 1)
        if module in _DIFFUSERS_BLOCK:
            return f"blocks.{index}.{_DIFFUSERS_BLOCK[module]}.{param}"
    else:
        module, _, param = key.rpartition(".")
        if module in _DIFFUSERS_TOP:
            return f"{_DIFFUSERS_TOP[module]}.{param}"
    raise KeyError(f"{key!r} is not a Wan DiT key")


def to_diffusers_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our (official Wan) state dict renamed for diffusers; tensors are shared, proj_l dropped."""
    out = {}
    for k, v in sd.items():
        name = diffusers_key(k)
        if name is not None:
            out[name] = v
    return out


def diffusers_config(cfg: DiTConfig | Mapping) -> dict:
    """Constructor kwargs of the diffusers `WanTransformer3DModel` with our architecture (no CLIP branch)."""
    cfg = _config(cfg)
    return dict(
        patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )
