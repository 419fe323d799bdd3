"""FP8 quantization of a model's block Linears, and saving/loading the quantized model without re-quantizing.

Which layers: every nn.Linear under `blocks.` except SLA's `proj_l` and the layers named in `keep` (TurboDiffusion
quantizes every block Linear but `proj_l`; embeddings, time layers and the head stay in their original dtype,
REFERENCE.md section 7). `keep` entries are dotted name pieces ("cross_attn", "self_attn.o") matched against
whole components of a layer's name, so "o" never matches "proj_out".

The runtime default (`DEFAULT_KEEP_BF16`) keeps in bf16 the Linears whose input is nearly the same vector for
every token: the attention output projections (soft attention averages the values) and the cross-attention
k/v (every video token reads the same 512 text keys). There e4m3's rounding errors repeat across tokens instead of
averaging out. Measured on the 1.3B DiT (random weights, CPU float32 emulation, 1560 tokens), output error against
full precision: every Linear in fp8 4.93%; keeping cross k,v 4.18%; cross k,v + self o 3.74%; all of the
cross-attention 3.08%; the default (self o, cross o, k, v) 2.48%; every attention Linear 2.06%. On an H100 at 81
frames (bench/bench_forward.py) the default measured 2.52% against bf16 (every Linear: 4.81%) for 1.5% more
forward time with SLA (178.5 vs 175.8 ms; 14B 720p: 3218 vs 3095 ms, +3.9 GiB of weights); `keep=()` is
TurboDiffusion's choice, every block Linear. Centering the o projections' inputs instead (quantizing x - mean_L(x)
and adding mean_L(x) W^T back as a bias) recovers little: every Linear in fp8 with both o projections centered
4.41%, with cross k,v kept 3.54% (same CPU setup, `bench/fp8_sensitivity.py`), so the default keeps them in bf16.
Works for any module with a `blocks` ModuleList; nothing here knows the DiT's classes.

Memory: layers are converted one at a time, so the peak is the model plus one layer's fp32 temporary (for the
14B model, a 13824x5120 FFN weight: 283 MB), never a second copy of the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from kernels.fp8_linear import FP8_DTYPE, FP8Linear
from turbo_batch.models.checkpoints import CheckpointError, load_strict, save_safetensors_atomic

FP8_FORMAT = "turbo_batch.fp8_e4m3fn.rowwise.v1"  # safetensors metadata tag of a quantized checkpoint
ALWAYS_SKIP = ("proj_l",)  # SLA's linear-branch projection stays in full precision (as TurboDiffusion's)
DEFAULT_KEEP_BF16 = ("self_attn.o", "cross_attn.o", "cross_attn.k", "cross_attn.v")  # `runtime.fp8_keep_bf16`


def name_matches(name: str, piece: str) -> bool:
    """True when the dotted `piece` ("cross_attn", "self_attn.o") is a run of whole components of `name`."""
    parts, want = name.split("."), piece.split(".")
    return any(parts[i : i + len(want)] == want for i in range(len(parts) - len(want) + 1))


def _is_target(name: str, within: str, skip: Iterable[str]) -> bool:
    """`name` lies under `within.` and matches no skip piece (whole components: `proj_l`, never `*proj_l*`)."""
    return name.startswith(within + ".") and not any(name_matches(name, piece) for piece in skip)


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def fp8_target_names(module: nn.Module, *, within: str = "blocks", keep: Iterable[str] = (),
                     skip: Iterable[str] = ALWAYS_SKIP) -> list[str]:
    """Qualified names of the nn.Linear layers `quantize_linears_` would replace, in module order."""
    skip = (*skip, *keep)
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and _is_target(n, within, skip)]


@torch.no_grad()
def quantize_linears_(
    module: nn.Module,
    *,
    within: str = "blocks",
    keep: Iterable[str] = (),
    skip: Iterable[str] = ALWAYS_SKIP,
    compute_device: torch.device | str | None = None,
    use_fast_accum: bool = True,
) -> nn.Module:
    """Replace each target nn.Linear (see `fp8_target_names`) by an FP8Linear quantized from its weight, in place.

    `keep`: dotted name pieces of Linears to leave in their dtype (the runtime passes `runtime.fp8_keep_bf16`,
    by default `DEFAULT_KEEP_BF16`; the function's own default, nothing kept, quantizes every block Linear).

    One layer at a time: the bf16 weight is released as soon as its fp8 copy exists. `compute_device` (e.g.
    "cuda" for a model still on CPU) runs the quantization there and brings the result back to the layer's
    device; the bits are the same either way. Meta-device layers become empty FP8Linear shells.
    `use_fast_accum` (CUDA GEMM accumulation mode, see FP8Linear) defaults on, like FP8Linear's.
    """
    for name in fp8_target_names(module, within=within, keep=keep, skip=skip):
        linear = module.get_submodule(name)
        home = linear.weight.device
        if compute_device is not None and home.type != "meta":
            linear = linear.to(compute_device)
        q = FP8Linear.from_linear(linear, use_fast_accum=use_fast_accum).to(home)
        _set_submodule(module, name, q)
        del linear
    return module


def fp8_shells_(module: nn.Module, names: Iterable[str], *, device: torch.device | str | None = None) -> nn.Module:
    """Swap the nn.Linear layers `names` for empty FP8Linear shells (same shapes) ready for a strict load."""
    for name in names:
        linear = module.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise CheckpointError(f"{name}: expected an nn.Linear to hold fp8 weights, found {type(linear).__name__}")
        dev = device if device is not None else linear.weight.device
        _set_submodule(module, name, FP8Linear(linear.in_features, linear.out_features, linear.bias is not None, dev))
    return module


def fp8_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The quantized model's state dict (fp8 weights, fp32 scales, everything else as is), ready for safetensors."""
    return {k: v.detach().contiguous() for k, v in module.state_dict().items()}


def quantized_layer_names(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Layers a checkpoint stores in fp8: those with an e4m3fn `weight` and a `weight_scale` beside it."""
    return sorted(
        k[: -len(".weight_scale")]
        for k in state_dict
        if k.endswith(".weight_scale") and state_dict.get(k[: -len("_scale")], torch.empty(0)).dtype == FP8_DTYPE
    )


def load_fp8_into_(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "fp8 checkpoint",
    *,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Load a checkpoint written from a quantized model onto a freshly built (bf16 or meta) one, strictly.

    The checkpoint itself says which layers are fp8 (`quantized_layer_names`); those Linears become shells,
    then every tensor is loaded with its stored dtype (no casting: fp8 stays fp8, scales stay fp32), so the
    result is bit-identical to the model that was saved. Any missing/unexpected/mis-shaped key raises.
    """
    names = quantized_layer_names(state_dict)
    if not names:
        raise CheckpointError(f"{source}: no fp8 layers found (expected '<layer>.weight' e4m3fn + '<layer>.weight_scale')")
    fp8_shells_(module, names, device="meta")
    return load_strict(module, state_dict, source, device=device)


def save_fp8_safetensors(module: nn.Module, path: str | Path) -> None:
    """Write the quantized model atomically as safetensors, tagged with the fp8 format in its metadata."""
    save_safetensors_atomic(fp8_state_dict(module), path, metadata={"format": "pt", "quantization": FP8_FORMAT})


__all__ = [
    "FP8_FORMAT", "ALWAYS_SKIP", "DEFAULT_KEEP_BF16", "name_matches", "fp8_target_names", "quantize_linears_",
    "fp8_shells_", "fp8_state_dict",
    "quantized_layer_names", "load_fp8_into_", "save_fp8_safetensors",
]
