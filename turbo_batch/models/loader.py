"""Build a preset's three components (umT5, DiT expert(s), VAE) from checkpoints or deterministic random weights.

Random weights are used by the tiny presets (always) and by real-size presets when `runtime.random_weights` is
set (benchmarks: speed does not depend on weight values). Nothing here fakes an output: random weights render
noise-like videos through exactly the same code path as real ones.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoints import CheckpointError, resolve_file


@dataclass
class ModelBundle:
    text_encoder: torch.nn.Module
    experts: dict[str, torch.nn.Module]
    vae: torch.nn.Module
    weights_id: str
    info: dict = field(default_factory=dict)


def _section(preset: DictConfig, key: str) -> dict:
    value = preset.get(key)
    return OmegaConf.to_container(value, resolve=True) if value is not None else {}


def random_seed_for(preset: DictConfig, cfg: DictConfig) -> int | None:
    """The random-weight seed in force for `preset`, or None when real checkpoints are loaded."""
    forced = cfg.runtime.get("random_weights")
    if forced is not None:
        return int(forced)
    rw = preset.get("random_weights")
    return int(rw.seed) if rw is not None else None


def weights_id(preset: DictConfig, cfg: DictConfig) -> str:
    """A cheap identity of the weights, for the render key (no hashing of 28 GB files).

    Random weights: preset name, architecture and seed. Checkpoints: for each part, the local path with its
    size, or the hub repo/filename/revision.
    """
    seed = random_seed_for(preset, cfg)
    arch = {k: _section(preset, k) for k in ("dit", "vae", "text_encoder")}
    if seed is not None:
        return f"random:{preset.name}:{seed}:{sorted(arch['dit'].items())}:{sorted(arch['vae'].items())}:{sorted(arch['text_encoder'].items())}"
    parts = []
    for part, spec in sorted(_section(preset, "checkpoints").items()):
        if spec.get("path"):
            p = Path(os.path.expanduser(spec["path"]))
            size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else -1
            parts.append(f"{part}={p.resolve()}:{size}")
        else:
            parts.append(f"{part}={spec.get('repo')}/{spec.get('filename')}@{spec.get('revision') or 'main'}")
    return f"ckpt:{preset.name}:" + ";".join(parts)


def load_models(preset: DictConfig, cfg: DictConfig, runtime: dict) -> ModelBundle:
    """Everything one actor needs, loaded once onto `runtime['device']`."""
    from .dit import DiTConfig
    from .dit_checkpoints import load_dit, random_dit
    from .text_encoder import load_text_encoder, random_text_encoder
    from .tokenizer import HFTokenizer
    from .vae import VAEConfig, load_vae, random_vae

    device = torch.device(runtime["device"])
    dtype = getattr(torch, runtime["dtype"])
    on_cuda = device.type == "cuda"
    vae_dtype = torch.bfloat16 if on_cuda else torch.float32
    seed = random_seed_for(preset, cfg)
    dit_cfg = DiTConfig.from_dict(_section(preset, "dit"))
    vae_cfg = VAEConfig.from_dict(_section(preset, "vae"))
    te_section = _section(preset, "text_encoder")
    experts: dict[str, torch.nn.Module] = {}
    if seed is not None:
        for i, name in enumerate(preset.experts):
            experts[name] = random_dit(dit_cfg, seed + 1000 * (i + 1), device=device, dtype=dtype, on_device=on_cuda)
        vae = random_vae(vae_cfg, seed + 7, device=device, dtype=vae_dtype, on_device=on_cuda)
        text_encoder = random_text_encoder(te_section or None, seed + 11, device=device, dtype=dtype if on_cuda else torch.float32,
                                           init_on_device=on_cuda)
    else:
        specs = _section(preset, "checkpoints")
        for name in preset.experts:
            spec = specs.get(name)
            if spec is None:
                raise CheckpointError(f"preset {preset.name!r} names expert {name!r} but has no checkpoints.{name} entry")
            experts[name] = load_dit(dit_cfg, resolve_file(spec, name), layout=spec.get("layout", "auto"), device=device, dtype=dtype)
        vae = load_vae(resolve_file(specs["vae"], "vae"), vae_cfg, device=device, dtype=vae_dtype)
        tok_spec = specs.get("tokenizer", {})
        # a repo id lets transformers fetch only the tokenizer files (resolve_file would snapshot the whole repo)
        tok_source = str(resolve_file(tok_spec, "tokenizer")) if tok_spec.get("path") else tok_spec.get("repo", "google/umt5-xxl")
        tokenizer = HFTokenizer(tok_source, max_length=dit_cfg.text_len)
        te_spec = specs["text_encoder"]
        text_encoder = load_text_encoder(resolve_file(te_spec, "text_encoder"), tokenizer, layout=te_spec.get("layout", "wan"),
                                         device=device, dtype=torch.bfloat16 if on_cuda else torch.float32)
    for model in experts.values():
        model.eval().requires_grad_(False)
        model.set_attention(runtime["attention"], 0.1)
    if runtime["quant"] == "fp8":
        from .quantize import quantize_linears_

        for model in experts.values():
            quantize_linears_(model, keep=runtime.get("fp8_keep_bf16", ()))
    vae.eval().requires_grad_(False)
    text_encoder.eval().requires_grad_(False)
    return ModelBundle(text_encoder=text_encoder, experts=experts, vae=vae, weights_id=weights_id(preset, cfg),
                       info={"random_weights_seed": seed})
