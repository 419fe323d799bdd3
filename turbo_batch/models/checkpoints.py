"""Finding, reading and strictly loading checkpoints, shared by every model.

Why this module exists: a partial or mis-mapped load renders garbage silently, and model files from the
internet must never execute code. So reading is safetensors or `torch.load(weights_only=True)` only, models
are built on the meta device and filled with `assign=True` (no double copy of a 28 GB model), and every
load is strict: missing, unexpected or mis-shaped keys raise an error that names them and the file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn


class CheckpointError(ValueError):
    """A checkpoint that cannot be found, read or mapped onto the model; the message names file and keys."""


# ----------------------------------------------------------------------------------------------- finding
def resolve_file(spec: Mapping, part: str) -> Path:
    """A local path for checkpoint `part` of a preset: `spec.path` if set, else a hub download into its cache.

    `spec` has `path` (local file or directory), `repo` and `filename` (Hugging Face hub). Offline, the error
    names the missing file and the setting that points at a local copy.
    """
    path = spec.get("path")
    if path:
        p = Path(os.path.expanduser(str(path)))
        if not p.exists():
            raise CheckpointError(f"checkpoint {part!r}: {p} does not exist (set checkpoints.{part}.path to an existing file)")
        return p
    repo, filename = spec.get("repo"), spec.get("filename")
    if not repo:
        raise CheckpointError(f"checkpoint {part!r}: neither checkpoints.{part}.path nor checkpoints.{part}.repo is set")
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        if filename:
            return Path(hf_hub_download(repo_id=repo, filename=filename))
        return Path(snapshot_download(repo_id=repo))
    except Exception as e:  # offline, gated, missing file: one clear message
        what = f"{repo}/{filename}" if filename else repo
        raise CheckpointError(
            f"checkpoint {part!r}: could not fetch {what} from the Hugging Face hub ({type(e).__name__}: {e}). "
            f"Download it where you are online and set checkpoints.{part}.path=/local/copy "
            f"(or pre-populate the hub cache and set HF_HUB_OFFLINE=1)."
        ) from e


# ----------------------------------------------------------------------------------------------- reading
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint on CPU, memory-mapped where the format allows.

    Accepts `.safetensors`, a sharded `*.safetensors.index.json` (or a directory holding one or a single
    safetensors file), and `.pth/.pt/.bin` read with `weights_only=True` (no pickle code execution).
    A TurboDiffusion/Wan `.pth` that wraps its weights in `state_dict`/`model`/`net` is unwrapped.
    """
    path = Path(path)
    if path.is_dir():
        index = sorted(path.glob("*.safetensors.index.json"))
        singles = sorted(path.glob("*.safetensors"))
        if index:
            path = index[0]
        elif len(singles) == 1:
            path = singles[0]
        else:
            raise CheckpointError(f"{path}: expected one *.safetensors file or a *.safetensors.index.json in this directory")
    name = path.name
    try:
        if name.endswith(".index.json"):
            weight_map = json.loads(path.read_text())["weight_map"]
            out: dict[str, torch.Tensor] = {}
            for shard in sorted(set(weight_map.values())):
                out.update(_read_safetensors(path.parent / shard))
            missing = set(weight_map) - set(out)
            if missing:
                raise CheckpointError(f"{path}: index lists keys absent from its shards: {_few(missing)}")
            return out
        if name.endswith(".safetensors"):
            return _read_safetensors(path)
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError:
        raise
    except FileNotFoundError as e:
        raise CheckpointError(f"{path}: file not found ({e})") from e
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read as a checkpoint ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model", "net", "module"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a flat dict of tensors")
    return obj


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], path: str | Path, metadata: dict | None = None) -> None:
    """Write a safetensors file via temp file + rename, so a crash never leaves half a checkpoint."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------- loading
def _few(keys: Iterable[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str, what: str, *,
               allow_missing: tuple[str, ...] = ()) -> None:
    """Raise CheckpointError naming every missing, unexpected and mis-shaped key of `got` against `expected`."""
    missing = [k for k in expected if k not in got and not k.endswith(allow_missing)]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: file {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in got and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} mis-shaped keys: {_few(shapes, 6)}")
        raise CheckpointError(f"{source}: does not match {what}: " + "; ".join(parts))


def load_strict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    *,
    allow_missing: Iterable[str] = (),
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    keep_fp32: Iterable[str] = (),
) -> nn.Module:
    """Fill `module` (usually built on the meta device) from `state_dict`, or raise naming every bad key.

    `allow_missing` holds key suffixes that may be absent (e.g. SLA `proj_l` in a non-Turbo checkpoint); they
    are zero-filled. Floating tensors are cast to `dtype` except keys ending in one of `keep_fp32`.
    """
    expected = module.state_dict(keep_vars=True)
    allow = tuple(allow_missing)
    check_keys(expected, state_dict, source, type(module).__name__, allow_missing=allow)
    keep = tuple(keep_fp32)
    filled = {}
    for k, ref in expected.items():
        t = state_dict.get(k)
        if t is None:
            t = torch.zeros(ref.shape, dtype=ref.dtype if ref.dtype != torch.float64 else torch.float32)
        target_dtype = t.dtype
        castable = t.is_floating_point() and t.element_size() > 1 and not k.endswith("weight_scale")  # fp8 + scales stay
        if dtype is not None and castable and not k.endswith(keep):
            target_dtype = dtype
        elif castable and k.endswith(keep):
            target_dtype = torch.float32
        filled[k] = t.to(device=device or "cpu", dtype=target_dtype)
    module.load_state_dict(filled, strict=True, assign=True)
    return module


def materialize_(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Give meta tensors real (uninitialised) storage; used before `random_init_`."""
    return module.to_empty(device=device)


@torch.no_grad()
def random_init_(module: nn.Module, seed: int, *, std_scale: float = 1.0, on_device: bool = False) -> nn.Module:
    """Deterministic random weights from `seed`, independent of device and of torch's global RNG.

    Weights (ndim >= 2) ~ N(0, 1/fan_in) so activations keep their scale through deep stacks; norm gains are
    near 1; biases and modulation tables small. Used by the tiny presets and by real-size benchmarks.
    Parameters are visited in name order, each from its own generator, so adding a module never shifts others.
    `on_device=True` draws on the parameter's own device (fast for 14B benchmarks, but then values differ
    between CPU and GPU); the default draws on CPU so the same seed gives the same weights everywhere.
    """
    for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
        if p.device.type == "meta":
            raise CheckpointError(f"random_init_: {name} is on the meta device; call materialize_ first")
        dev = p.device if on_device else torch.device("cpu")
        g = torch.Generator(device=dev).manual_seed((seed * 1_000_003 + _stable_hash(name)) % (2**63))
        shape = p.shape
        is_gain = name.endswith("gamma") or ("norm" in name and name.endswith("weight"))  # VAE gammas are [C,1,1,1]
        if is_gain:
            val = 1.0 + 0.1 * torch.randn(shape, generator=g, device=dev)
        elif p.ndim >= 2:
            fan_in = math.prod(shape[1:])
            val = torch.randn(shape, generator=g, device=dev) * (std_scale / math.sqrt(fan_in))
        else:
            val = 0.02 * torch.randn(shape, generator=g, device=dev)
        p.copy_(val.to(p.dtype))
    return module


def _stable_hash(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
