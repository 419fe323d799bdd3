"""One place for configuration: `conf/defaults.yaml` + a model preset from `conf/models/` + dotlist overrides.

Everything is OmegaConf so users can override any key on the command line (`sampling.steps=2`).
"""
from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(os.environ.get("TURBO_BATCH_CONF", Path(__file__).resolve().parent.parent / "conf"))

ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"

ASPECT_RATIOS = ("16:9", "9:16", "4:3", "3:4", "1:1")


class ConfigError(ValueError):
    """A configuration value or preset name that cannot be used; the message says what is allowed."""


def list_presets() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "models").glob("*.yaml"))


def load_preset(name: str) -> DictConfig:
    """The model preset `name` (architecture, checkpoints, sampling defaults)."""
    path = CONF_DIR / "models" / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(list_presets())}")
    preset = OmegaConf.load(path)
    preset.setdefault("checkpoints", {})
    return preset


def load_config(overrides: list[str] | tuple[str, ...] = (), base: DictConfig | None = None) -> DictConfig:
    """Defaults merged with `key=value` overrides. Unknown top-level keys are rejected to catch typos."""
    cfg = base if base is not None else OmegaConf.load(CONF_DIR / "defaults.yaml")
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (e.g. sampling.steps=2)")
        top = item.split("=", 1)[0].split(".", 1)[0].lstrip("+~")
        if top not in cfg and top != "presets":
            raise ConfigError(f"override {item!r}: unknown key {top!r}; known keys: {', '.join(cfg.keys())}")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(overrides))
    return cfg


def resolve_runtime(cfg: DictConfig) -> dict:
    """Turn `auto` runtime settings into concrete ones for this process's hardware."""
    import torch

    rt = dict(OmegaConf.to_container(cfg.runtime, resolve=True))
    if rt["device"] == "auto":
        rt["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = rt["device"].startswith("cuda")
    if rt["dtype"] == "auto":
        rt["dtype"] = "bfloat16" if on_cuda else "float32"
    if rt["attention"] == "auto":
        rt["attention"] = "sla" if on_cuda else "sla_ref"
    if rt["quant"] == "auto":
        rt["quant"] = "fp8" if on_cuda and torch.cuda.get_device_capability() >= (8, 9) else "none"
    allowed = {"attention": ("dense", "sla", "sla_ref"), "quant": ("none", "fp8"), "dtype": ("bfloat16", "float32", "float16")}
    for key, options in allowed.items():
        if rt[key] not in options:
            raise ConfigError(f"runtime.{key}={rt[key]!r} is not one of {', '.join(options)} (or auto)")
    graph = rt.get("cuda_graph", "auto")
    if graph == "auto":
        graph = on_cuda
    if not isinstance(graph, bool):
        raise ConfigError(f"runtime.cuda_graph={graph!r} must be true, false or auto")
    rt["cuda_graph"] = graph and on_cuda
    keep = rt.get("fp8_keep_bf16")
    if keep is None:
        keep = []
    if not isinstance(keep, (list, tuple)) or not all(isinstance(k, str) and k.strip(".") for k in keep):
        raise ConfigError(f"runtime.fp8_keep_bf16={keep!r} must be a list of dotted layer-name pieces, "
                          "e.g. [self_attn.o, cross_attn.o], or [] to quantize every block Linear")
    rt["fp8_keep_bf16"] = list(keep)
    # quant=fp8 on CPU is allowed: the float32 emulation of the FP8 numerics (tests); it is not fast
    return rt


def cuda_process_env(cfg: DictConfig, environ=os.environ) -> dict[str, str]:
    """Environment variables a GPU process of this run starts with (before it imports torch).

    Only `render.cuda_alloc_conf` as PYTORCH_CUDA_ALLOC_CONF, and only where the job's own environment does not
    already set one: a user's allocator setting wins. It changes where blocks live, never a frame's bits.
    """
    value = cfg.render.get("cuda_alloc_conf")
    if not value or ALLOC_CONF_ENV in environ:
        return {}
    return {ALLOC_CONF_ENV: str(value)}


def preset_value(preset: DictConfig, cfg: DictConfig, key: str):
    """A sampling default: the global value unless it is null, then the preset's."""
    value = cfg.sampling.get(key)
    if value is None:
        value = preset.get("defaults", {}).get(key) if key != "sigma_max" else preset.sigma_max
    return value
