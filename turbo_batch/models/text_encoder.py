"""The umT5-XXL text encoder: prompts -> the text context Wan's DiT cross-attends to.

transformers' `UMT5EncoderModel` is the same network as Wan's own T5 encoder (RMS norms with fp32 variance,
unscaled attention with a per-layer relative position bias, gated tanh-GELU FFN), so we reuse it and only map
Wan's checkpoint key layout onto it. Numerics follow Wan: every weight in the model dtype (bf16 for real models;
unlike `from_pretrained` we do not keep `wo` in fp32), eager attention with the padding keys masked out, and the
output rows past each prompt's real tokens replaced by exact zeros (REFERENCE §3).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import nn

from .checkpoints import CheckpointError, _few, check_keys, load_strict, materialize_, random_init_, read_state_dict
from .tokenizer import HFTokenizer, TinyTokenizer, clean_prompt

# umT5-XXL as Wan ships it (`umt5_xxl` in Wan's t5.py; google/umt5-xxl's config).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_ff=10240,
    num_heads=64,
    d_kv=64,
    num_layers=24,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    layer_norm_epsilon=1e-6,
)
TEXT_LEN = 512
_PRESET_ONLY_KEYS = {"text_len"}  # preset keys that describe the encoder's use, not the network


# ----------------------------------------------------------------------------------------------- config
def text_encoder_config(preset_section: Mapping | None = None):
    """A `UMT5Config` for the encoder: umT5-XXL, with any field the preset's `text_encoder` section overrides.

    Unknown keys raise (a typo must not silently build the real 5.7B-parameter network).
    """
    from transformers import UMT5Config

    values = dict(UMT5_XXL)
    for key in preset_section or {}:
        if key in _PRESET_ONLY_KEYS:
            continue
        if key not in UMT5_XXL:
            from ..config import ConfigError

            raise ConfigError(f"text_encoder.{key} is not a text-encoder setting; known: {', '.join([*UMT5_XXL, *_PRESET_ONLY_KEYS])}")
        values[key] = int(preset_section[key]) if key != "layer_norm_epsilon" else float(preset_section[key])
    return UMT5Config(
        **values,
        feed_forward_proj="gated-gelu",  # -> dense_act_fn gelu_new, the tanh GELU Wan uses
        dropout_rate=0.0,
        tie_word_embeddings=True,
        attn_implementation="eager",  # Wan's order of operations; SDPA gives other bits for no real gain at 512 tokens
    )


def _text_len(preset_section: Mapping | None) -> int:
    return int((preset_section or {}).get("text_len", TEXT_LEN))


# ----------------------------------------------------------------------------------------------- key layouts
# Wan's T5Encoder (wan/modules/t5.py, shared_pos=False) -> transformers' UMT5EncoderModel, per block.
# Wan's FFN is fc2(fc1(x) * gelu(gate(x))); HF's is wo(gelu(wi_0(x)) * wi_1(x)): gate.0 = wi_0, fc1 = wi_1.
_BLOCK_WAN_TO_HF = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_HF_TO_WAN = {v: k for k, v in _BLOCK_WAN_TO_HF.items()}
_WAN_EMBED = "token_embedding.weight"
_HF_EMBEDS = ("shared.weight", "encoder.embed_tokens.weight")  # one tied tensor under two names
_TOP_WAN_TO_HF = {"norm.weight": "encoder.final_layer_norm.weight"}
_TOP_HF_TO_WAN = {v: k for k, v in _TOP_WAN_TO_HF.items()}
_WAN_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_BLOCK_KEY = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def _wan_key_to_hf(key: str) -> str | None:
    if key in _TOP_WAN_TO_HF:
        return _TOP_WAN_TO_HF[key]
    m = _WAN_BLOCK_KEY.fullmatch(key)
    if m and m.group(2) in _BLOCK_WAN_TO_HF:
        return f"encoder.block.{m.group(1)}.{_BLOCK_WAN_TO_HF[m.group(2)]}"
    return None


def _hf_key_to_wan(key: str) -> str | None:
    if key in _HF_EMBEDS:
        return _WAN_EMBED
    if key in _TOP_HF_TO_WAN:
        return _TOP_HF_TO_WAN[key]
    m = _HF_BLOCK_KEY.fullmatch(key)
    if m and m.group(2) in _BLOCK_HF_TO_WAN:
        return f"blocks.{m.group(1)}.{_BLOCK_HF_TO_WAN[m.group(2)]}"
    return None


def wan_t5_to_hf_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Wan's `models_t5_umt5-xxl-enc-bf16.pth` keys -> `UMT5EncoderModel` keys (same tensors, no copies).

    The token embedding goes to both `shared.weight` and `encoder.embed_tokens.weight` (HF ties them).
    Keys that are not part of Wan's encoder raise, naming them and `source`.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in sd.items():
        if key == _WAN_EMBED:
            for hf_key in _HF_EMBEDS:
                out[hf_key] = tensor
            continue
        hf_key = _wan_key_to_hf(key)
        if hf_key is None:
            unknown.append(key)
        else:
            out[hf_key] = tensor
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} unexpected keys for Wan's umT5 encoder layout: {_few(unknown)}")
    return out


def hf_to_wan_t5_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> dict[str, torch.Tensor]:
    """`UMT5EncoderModel` keys -> Wan's T5 encoder keys; the inverse of `wan_t5_to_hf_state_dict`.

    Of the two tied embedding names, `shared.weight` (the tie's source) wins when both are present.
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, tensor in sd.items():
        if key == "encoder.embed_tokens.weight" and "shared.weight" in sd:
            continue
        wan_key = _hf_key_to_wan(key)
        if wan_key is None:
            unknown.append(key)
        else:
            out[wan_key] = tensor
    if unknown:
        raise CheckpointError(f"{source}: {len(unknown)} unexpected keys for transformers' UMT5EncoderModel: {_few(unknown)}")
    return out


def _check_keys(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """Strict key and shape check in the file's own key space, so errors name the keys the file really has."""
    check_keys(expected, got, source, what)


def _hf_encoder_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An HF-format state dict reduced to the encoder: a full umT5 (encoder-decoder) checkpoint is accepted by
    skipping its `decoder.*` and `lm_head.*`; the tied embedding is filled in under whichever name is absent."""
    out = {k: v for k, v in sd.items() if not k.startswith(("decoder.", "lm_head."))}
    source = out.get("shared.weight", out.get("encoder.embed_tokens.weight"))
    if source is not None:
        out["shared.weight"] = source
        out["encoder.embed_tokens.weight"] = source
    return out


# ----------------------------------------------------------------------------------------------- model
def _build_on_meta(config, dtype: torch.dtype) -> nn.Module:
    from transformers import UMT5EncoderModel

    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    return model.to(dtype=dtype)


def _tie_embeddings(model: nn.Module) -> nn.Module:
    """One embedding tensor under both names: materializing or assign-loading unties HF's tie."""
    model.encoder.embed_tokens.weight = model.shared.weight
    return model


class TextEncoder(nn.Module):
    """umT5 encoder + tokenizer. `encode(prompts)` -> [B, text_len, d_model] in the model dtype, zero rows
    past each prompt's real tokens (its eos included), exactly what Wan's DiT receives as context."""

    def __init__(self, model: nn.Module, tokenizer, text_len: int = TEXT_LEN):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len = int(text_len)

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cleaned like Wan cleans, padded/truncated to text_len: (input_ids, attention_mask), both [B, text_len]."""
        return self.tokenizer([clean_prompt(p) for p in prompts], self.text_len)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Encoder output with every row at or past a prompt's token count set to exact zero."""
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        lengths = attention_mask.gt(0).sum(dim=1)
        positions = torch.arange(hidden.shape[1], device=hidden.device)
        padding = positions[None, :] >= lengths[:, None]
        return hidden.masked_fill(padding[..., None], 0)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """One forward per prompt, so a prompt's embedding never depends on its batch neighbours (same shapes,
        same kernels, same bits). Prompts are few and cached by the caller, so batching would buy little."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        if len(prompts) == 0:
            return torch.zeros((0, self.text_len, self.dim), dtype=self.dtype, device=self.device)
        return torch.cat([self(*self.tokenize([p])) for p in prompts], dim=0)


def without_padding(embedding: torch.Tensor) -> torch.Tensor:
    """[text_len, dim] -> [tokens, dim]: drops the zero rows `TextEncoder` writes past a prompt's tokens (at least one
    row stays). The DiT pads them back (`WanDiT.forward`), so the result is the same; on its fused path it needs
    only the tokens (`dit.collapse_text_padding`)."""
    rows = embedding.ne(0).any(dim=-1).nonzero()
    return embedding[: int(rows[-1]) + 1 if len(rows) else 1]


# ----------------------------------------------------------------------------------------------- construction
def random_text_encoder(
    preset_section: Mapping | None,
    seed: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    init_on_device: bool = False,
) -> TextEncoder:
    """An encoder with deterministic random weights and the hashing `TinyTokenizer` (tiny presets, benchmarks).

    Built on meta and materialized once in `dtype`: the same seed gives the same weights on every device
    unless `init_on_device=True` (fast for real-size benchmarks, values then device dependent).
    """
    config = text_encoder_config(preset_section)
    model = _build_on_meta(config, dtype)
    materialize_(model, device)
    _tie_embeddings(model)
    random_init_(model, seed, on_device=init_on_device)
    return TextEncoder(model, TinyTokenizer(config.vocab_size), _text_len(preset_section))


def _as_config(config):
    """A UMT5Config from None (umT5-XXL), a preset-style mapping, or a UMT5Config itself."""
    if config is None or isinstance(config, Mapping):
        return text_encoder_config(config)
    return config


def _hf_config_for(path: Path, config):
    """Explicit config if given, else config.json beside the weights, else umT5-XXL."""
    if config is not None:
        return _as_config(config)
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file():
        from transformers import UMT5Config

        try:
            return UMT5Config.from_json_file(str(folder / "config.json"))
        except Exception as e:
            raise CheckpointError(f"{folder / 'config.json'}: not a readable UMT5 config ({type(e).__name__}: {e})") from e
    return text_encoder_config(None)


def _weights_file(path: Path) -> str:
    """The file an HF directory's weights come from (as `read_state_dict` picks it), for error messages."""
    if path.is_dir():
        files = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
        if len(files) == 1:
            return str(files[0])
    return str(path)


def load_text_encoder(
    ckpt_path: str | Path,
    tokenizer,
    layout: str = "wan",
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    config=None,
    text_len: int = TEXT_LEN,
) -> TextEncoder:
    """The umT5 encoder from a checkpoint, loaded strictly (bad keys raise `CheckpointError` naming key and file).

    layout `wan`: Wan's `models_t5_umt5-xxl-enc-bf16.pth` (config: umT5-XXL unless `config` says otherwise).
    layout `hf`: a transformers directory (config.json + safetensors, sharded or not) or safetensors file.
    `tokenizer`: a tokenizer object, or a hub id / local directory for `HFTokenizer`.
    The model is built on meta and filled by assignment: one copy of the weights at peak, and the tied
    embedding (2 GB in bf16) is converted once and shared by both of its names.
    """
    path = Path(ckpt_path)
    source = str(path)
    device = torch.device(device)
    if layout == "wan":
        model = _build_on_meta(_as_config(config), dtype)
        raw = read_state_dict(path)
        expected_wan = hf_to_wan_t5_state_dict(model.state_dict())
        _check_keys(expected_wan, raw, source, "Wan's umT5 encoder layout")
        sd = wan_t5_to_hf_state_dict(raw, source)
    elif layout == "hf":
        model = _build_on_meta(_hf_config_for(path, config), dtype)
        sd = _hf_encoder_state_dict(read_state_dict(path))
        source = _weights_file(path)
    else:
        raise CheckpointError(f"{path}: unknown text encoder layout {layout!r}; use 'wan' or 'hf'")
    embedding = sd.get("shared.weight")
    if embedding is not None and tuple(embedding.shape) == tuple(model.shared.weight.shape):
        embedding = embedding.to(device=device, dtype=dtype)
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"] = embedding
    load_strict(model, sd, source, device=device, dtype=dtype)
    _tie_embeddings(model)
    if isinstance(tokenizer, (str, Path)):
        tokenizer = HFTokenizer(tokenizer, text_len)
    return TextEncoder(model, tokenizer, text_len)


__all__ = [
    "TextEncoder",
    "text_encoder_config",
    "random_text_encoder",
    "load_text_encoder",
    "wan_t5_to_hf_state_dict",
    "hf_to_wan_t5_state_dict",
    "HFTokenizer",
    "TinyTokenizer",
]
