"""Specification of the umT5 text encoder: cleaning, tokenizers, zero padding rows, batch invariance, and
strict loading of Wan's and transformers' checkpoint layouts (tiny umT5 dims from the tiny-t2v preset)."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from turbo_batch.config import ConfigError, load_preset
from turbo_batch.models.checkpoints import CheckpointError, save_safetensors_atomic
from turbo_batch.models.text_encoder import (
    TextEncoder,
    hf_to_wan_t5_state_dict,
    load_text_encoder,
    random_text_encoder,
    text_encoder_config,
    wan_t5_to_hf_state_dict,
)
from turbo_batch.models.tokenizer import EOS_ID, PAD_ID, HFTokenizer, TinyTokenizer, clean_prompt

PROMPTS = [
    "A cat walks on the grass, realistic.",
    "Two  astronauts &amp; a dog\n\ton the moon",
    "",
    "neon city at night, rain, cinematic lighting, slow dolly shot",
]


@pytest.fixture(scope="module")
def section():
    return load_preset("tiny-t2v").text_encoder


@pytest.fixture(scope="module")
def encoder(section) -> TextEncoder:
    return random_text_encoder(section, seed=7)


@pytest.fixture(scope="module")
def checkpoint_files(encoder, tmp_path_factory):
    """The random tiny encoder written twice: Wan's .pth layout and a transformers save_pretrained directory."""
    root = tmp_path_factory.mktemp("t5")
    wan_path = root / "models_t5_umt5-tiny-enc.pth"
    torch.save({k: v.clone() for k, v in hf_to_wan_t5_state_dict(encoder.model.state_dict()).items()}, wan_path)
    hf_dir = root / "hf"
    encoder.model.save_pretrained(hf_dir)
    return wan_path, hf_dir


# ----------------------------------------------------------------------------------------------- cleaning
def test_clean_prompt_unescapes_html_twice_and_collapses_whitespace():
    assert clean_prompt("  a &amp;amp; b \n\t c  ") == "a & b c"
    assert clean_prompt("&lt;tag&gt;") == "<tag>"
    assert clean_prompt("\n\n") == ""


def test_clean_prompt_fixes_mojibake_when_ftfy_is_installed():
    pytest.importorskip("ftfy")
    assert clean_prompt("caf\u00c3\u00a9 au lait") == "caf\u00e9 au lait"


# ----------------------------------------------------------------------------------------------- tokenizers
def test_tiny_tokenizer_ids_are_pinned_and_stable_across_processes():
    ids, mask = TinyTokenizer(512)(["A cat, running."], 8)
    expected = TinyTokenizer(512).encode("a cat , running .") + [EOS_ID]
    assert ids[0, :6].tolist() == expected
    assert ids[0, :6].tolist() == PINNED_TINY_IDS
    assert mask[0].tolist() == [1] * 6 + [0] * 2
    code = "from turbo_batch.models.tokenizer import TinyTokenizer; print(TinyTokenizer(512).encode('A cat, running.'))"
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert eval(out.stdout.strip()) == PINNED_TINY_IDS[:-1]


PINNED_TINY_IDS = [102, 161, 302, 22, 41, EOS_ID]


def test_tiny_tokenizer_truncation_keeps_the_eos_and_padding_is_zero():
    tok = TinyTokenizer(64)
    ids, mask = tok(["one two three four five six seven", "hi"], 4)
    assert ids.shape == mask.shape == (2, 4) and ids.dtype == mask.dtype == torch.long
    assert ids[0, -1].item() == EOS_ID and mask[0].tolist() == [1, 1, 1, 1]
    assert ids[1].tolist()[1:] == [EOS_ID, PAD_ID, PAD_ID] and mask[1].tolist() == [1, 1, 0, 0]
    assert bool(((ids >= 2) & (ids < 64) | (ids <= 1)).all())


def test_tiny_tokenizer_gives_an_empty_prompt_just_the_eos():
    ids, mask = TinyTokenizer(64)([""], 3)
    assert ids.tolist() == [[EOS_ID, PAD_ID, PAD_ID]] and mask.tolist() == [[1, 0, 0]]


def test_hf_tokenizer_pads_truncates_and_keeps_the_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4, "runs": 5, ",": 6}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>").save_pretrained(tmp_path)

    ids, mask = HFTokenizer(tmp_path, max_length=5)(["a cat runs", "a cat runs , a cat runs"])
    assert ids.tolist() == [[3, 4, 5, EOS_ID, PAD_ID], [3, 4, 5, 6, EOS_ID]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_hf_tokenizer_that_cannot_be_found_raises_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="checkpoints.tokenizer.path"):
        HFTokenizer(tmp_path / "nowhere")


# ----------------------------------------------------------------------------------------------- config
def test_config_defaults_are_umt5_xxl():
    cfg = text_encoder_config(None)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (256384, 4096, 10240, 64, 64, 24)
    assert cfg.relative_attention_num_buckets == 32 and cfg.relative_attention_max_distance == 128
    assert cfg.is_gated_act and cfg.dense_act_fn == "gelu_new" and cfg.layer_norm_epsilon == 1e-6


def test_config_takes_the_preset_dims_and_rejects_unknown_keys(section):
    cfg = text_encoder_config(section)
    assert (cfg.vocab_size, cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (512, 32, 64, 2, 16, 2)
    with pytest.raises(ConfigError, match="hidden_size"):
        text_encoder_config({"hidden_size": 8})


# ----------------------------------------------------------------------------------------------- encoding
def test_encode_shape_dtype_and_tied_embedding(encoder, section):
    out = encoder.encode(PROMPTS)
    assert out.shape == (len(PROMPTS), section.text_len, section.d_model) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert encoder.model.shared.weight is encoder.model.encoder.embed_tokens.weight
    assert encoder.encode([]).shape == (0, section.text_len, section.d_model)


def test_rows_past_the_real_tokens_are_exactly_zero_and_real_rows_are_not(encoder):
    out = encoder.encode(PROMPTS)
    _, mask = encoder.tokenize(PROMPTS)
    for row, n in enumerate(mask.sum(dim=1).tolist()):
        assert n >= 1
        assert torch.equal(out[row, n:], torch.zeros_like(out[row, n:]))
        assert bool((out[row, :n].abs().amax(dim=-1) > 0).all())


def test_a_prompt_longer_than_text_len_fills_every_row(encoder, section):
    long_prompt = " ".join(f"word{i}" for i in range(3 * section.text_len))
    out = encoder.encode([long_prompt])
    assert bool((out[0].abs().amax(dim=-1) > 0).all())


def test_same_prompt_alone_or_among_others_gives_identical_bits(encoder):
    alone = encoder.encode([PROMPTS[0]])
    among = encoder.encode([PROMPTS[3], PROMPTS[0], PROMPTS[1]])
    assert torch.equal(alone[0], among[1])


def test_prompts_are_cleaned_before_tokenizing(encoder):
    assert torch.equal(encoder.encode(["a &amp; b   c"]), encoder.encode(["a & b c"]))


def test_same_seed_gives_the_same_weights_and_another_seed_does_not(section, encoder):
    again = random_text_encoder(section, seed=7)
    other = random_text_encoder(section, seed=8)
    sd, sd_again, sd_other = encoder.model.state_dict(), again.model.state_dict(), other.model.state_dict()
    assert all(torch.equal(sd[k], sd_again[k]) for k in sd)
    assert not torch.equal(sd["shared.weight"], sd_other["shared.weight"])


# ----------------------------------------------------------------------------------------------- key layouts
def test_key_mapping_is_a_bijection_up_to_the_tied_embedding(encoder):
    hf = encoder.model.state_dict()
    wan = hf_to_wan_t5_state_dict(hf)
    n_layers = encoder.model.config.num_layers
    assert len(wan) == 2 + 10 * n_layers and len(hf) == len(wan) + 1
    back = wan_t5_to_hf_state_dict(wan)
    assert set(back) == set(hf) and all(back[k] is hf[k] or torch.equal(back[k], hf[k]) for k in hf)
    again = hf_to_wan_t5_state_dict(back)
    assert set(again) == set(wan) and all(again[k] is wan[k] for k in wan)
    assert len({k for k in back if k not in ("shared.weight", "encoder.embed_tokens.weight")}) == len(wan) - 1


def test_wan_gate_is_the_activated_wi_0_and_fc1_the_linear_wi_1():
    pairs = {"gate.0": "wi_0", "fc1": "wi_1", "fc2": "wo"}
    for wan_name, hf_name in pairs.items():
        wan_key, hf_key = f"blocks.3.ffn.{wan_name}.weight", f"encoder.block.3.layer.1.DenseReluDense.{hf_name}.weight"
        assert list(wan_t5_to_hf_state_dict({wan_key: torch.zeros(1)})) == [hf_key]
        assert list(hf_to_wan_t5_state_dict({hf_key: torch.zeros(1)})) == [wan_key]


def test_unknown_keys_in_either_mapping_raise_naming_the_key():
    with pytest.raises(CheckpointError, match="blocks.0.ffn.gate.1.weight"):
        wan_t5_to_hf_state_dict({"blocks.0.ffn.gate.1.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="decoder.block.0"):
        hf_to_wan_t5_state_dict({"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(1)})


def test_wan_layout_file_loads_to_the_same_output_as_the_hf_directory(encoder, checkpoint_files, section):
    wan_path, hf_dir = checkpoint_files
    from_wan = load_text_encoder(wan_path, encoder.tokenizer, layout="wan", dtype=torch.float32, config=section, text_len=section.text_len)
    from_hf = load_text_encoder(hf_dir, encoder.tokenizer, layout="hf", dtype=torch.float32, text_len=section.text_len)
    a, b, ref = from_wan.encode(PROMPTS), from_hf.encode(PROMPTS), encoder.encode(PROMPTS)
    assert torch.equal(a, b) and torch.equal(a, ref)
    for loaded in (from_wan, from_hf):
        assert loaded.model.shared.weight is loaded.model.encoder.embed_tokens.weight
        assert not loaded.model.training


def test_hf_checkpoint_of_a_full_umt5_loads_its_encoder_whichever_embedding_name_it_uses(checkpoint_files, encoder, tmp_path):
    from safetensors.torch import load_file

    hf_dir = checkpoint_files[1]
    sd = load_file(str(hf_dir / "model.safetensors"))
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    sd["decoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(4, 4)
    sd["lm_head.weight"] = torch.zeros(4, 4)
    full = tmp_path / "full"
    full.mkdir()
    (full / "config.json").write_text((hf_dir / "config.json").read_text())
    save_safetensors_atomic(sd, full / "model.safetensors")
    te = load_text_encoder(full, encoder.tokenizer, layout="hf", dtype=torch.float32, text_len=encoder.text_len)
    assert torch.equal(te.encode(PROMPTS), encoder.encode(PROMPTS))


def test_loaded_dtype_is_applied_to_every_weight_including_wo(checkpoint_files, encoder, section):
    wan_path, _ = checkpoint_files
    te = load_text_encoder(wan_path, encoder.tokenizer, layout="wan", dtype=torch.bfloat16, config=section, text_len=section.text_len)
    assert {p.dtype for p in te.model.parameters()} == {torch.bfloat16}
    assert te.encode(PROMPTS[:1]).dtype == torch.bfloat16


def test_hf_model_matches_wans_t5_math(encoder, section):
    """An independent re-statement of Wan's T5 encoder forward on the Wan-layout weights: proves the mapping
    (incl. gate/fc1) and that transformers' UMT5 computes what Wan's T5 computes."""
    ids, mask = encoder.tokenize(PROMPTS)
    wan_sd = hf_to_wan_t5_state_dict(encoder.model.state_dict())
    ref = wan_t5_reference(wan_sd, ids, mask, num_heads=section.num_heads)
    lengths = mask.sum(1)
    ref = torch.stack([torch.cat([r[:n], torch.zeros_like(r[n:])]) for r, n in zip(ref, lengths.tolist())])
    torch.testing.assert_close(encoder(ids, mask), ref, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- bad checkpoints
def _wan_sd(path):
    return torch.load(path, weights_only=True)


@pytest.mark.parametrize(
    "corrupt, key",
    [
        (lambda sd: sd.pop("blocks.1.ffn.fc1.weight"), "blocks.1.ffn.fc1.weight"),
        (lambda sd: sd.__setitem__("blocks.0.ffn.extra.weight", torch.zeros(2)), "blocks.0.ffn.extra.weight"),
        (lambda sd: sd.__setitem__("norm.weight", torch.ones(7)), "norm.weight"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_bad_wan_checkpoint_raises_naming_the_key_and_file(checkpoint_files, encoder, section, tmp_path, corrupt, key):
    sd = _wan_sd(checkpoint_files[0])
    corrupt(sd)
    bad = tmp_path / "bad_t5.pth"
    torch.save(sd, bad)
    with pytest.raises(CheckpointError) as err:
        load_text_encoder(bad, encoder.tokenizer, layout="wan", dtype=torch.float32, config=section)
    assert key in str(err.value) and str(bad) in str(err.value)


@pytest.mark.parametrize(
    "corrupt, key",
    [
        (lambda sd: sd.pop("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"), "relative_attention_bias"),
        (lambda sd: sd.__setitem__("encoder.block.0.layer.2.bogus.weight", torch.zeros(2)), "encoder.block.0.layer.2.bogus.weight"),
        (lambda sd: sd.__setitem__("encoder.final_layer_norm.weight", torch.ones(5)), "encoder.final_layer_norm.weight"),
    ],
    ids=["missing", "unexpected", "mis-shaped"],
)
def test_bad_hf_checkpoint_raises_naming_the_key_and_file(checkpoint_files, encoder, tmp_path, corrupt, key):
    from safetensors.torch import load_file

    hf_dir = checkpoint_files[1]
    sd = load_file(str(hf_dir / "model.safetensors"))
    corrupt(sd)
    bad_dir = tmp_path / "bad_hf"
    bad_dir.mkdir()
    (bad_dir / "config.json").write_text((hf_dir / "config.json").read_text())
    save_safetensors_atomic(sd, bad_dir / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_text_encoder(bad_dir, encoder.tokenizer, layout="hf", dtype=torch.float32)
    assert key in str(err.value) and "model.safetensors" in str(err.value)


def test_unknown_layout_and_missing_file_raise(encoder, section, tmp_path):
    with pytest.raises(CheckpointError, match="layout"):
        load_text_encoder(tmp_path, encoder.tokenizer, layout="diffusers", config=section)
    with pytest.raises(CheckpointError, match="absent.pth"):
        load_text_encoder(tmp_path / "absent.pth", encoder.tokenizer, layout="wan", config=section)


# ----------------------------------------------------------------------------------------------- Wan reference
def _relative_buckets(length: int, num_buckets: int, max_distance: int, device) -> torch.Tensor:
    """Bidirectional T5 buckets of (key position - query position), as in Wan's T5RelativeEmbedding."""
    rel = torch.arange(length, device=device)[None, :] - torch.arange(length, device=device)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).long() * half
    rel = rel.abs()
    exact = half // 2
    large = exact + (torch.log(rel.float() / exact) / math.log(max_distance / exact) * (half - exact)).long()
    large = torch.minimum(large, torch.full_like(large, half - 1))
    return buckets + torch.where(rel < exact, rel, large)


def _rms_norm(x, weight, eps=1e-6):
    x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight.dtype in (torch.float16, torch.bfloat16):
        x = x.type_as(weight)
    return weight * x


def _tanh_gelu(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


@torch.no_grad()
def wan_t5_reference(sd, ids, mask, num_heads, num_buckets=32, max_distance=128):
    """Wan's T5Encoder forward restated over Wan-layout weights (eval mode: no dropout)."""
    sd = {k: v.to(ids.device) for k, v in sd.items()}
    x = F.embedding(ids, sd["token_embedding.weight"])
    b, length = ids.shape
    buckets = _relative_buckets(length, num_buckets, max_distance, ids.device)
    n_layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n_layers):
        p = f"blocks.{i}."
        h = _rms_norm(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{n}.weight"]).view(b, length, num_heads, -1) for n in "qkv")
        bias = x.new_zeros(b, num_heads, length, length)
        bias += F.embedding(buckets, sd[p + "pos_embedding.embedding.weight"]).permute(2, 0, 1).unsqueeze(0)
        bias.masked_fill_(mask.view(b, 1, 1, length) == 0, torch.finfo(x.dtype).min)
        attn = torch.einsum("binc,bjnc->bnij", q, k) + bias
        attn = F.softmax(attn.float(), dim=-1).type_as(attn)
        o = torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, length, -1)
        x = x + F.linear(o, sd[p + "attn.o.weight"])
        h = _rms_norm(x, sd[p + "norm2.weight"])
        ff = F.linear(h, sd[p + "ffn.fc1.weight"]) * _tanh_gelu(F.linear(h, sd[p + "ffn.gate.0.weight"]))
        x = x + F.linear(ff, sd[p + "ffn.fc2.weight"])
    return _rms_norm(x, sd["norm.weight"])


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_size_umt5_xxl_on_gpu_bf16_matches_wan_math_and_is_batch_invariant():
    """umT5-XXL dims, random bf16 weights, 512 tokens: zero padding rows, batch invariance, closeness to Wan's
    T5 math, and the time per prompt. Prints a table (run with -s)."""
    torch.manual_seed(0)
    t0 = time.perf_counter()
    te = random_text_encoder(None, seed=0, device="cuda", dtype=torch.bfloat16, init_on_device=True)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    prompts = [p * 12 for p in PROMPTS] + [" ".join(f"w{i}" for i in range(700))]
    te.encode(prompts[:1])  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = te.encode(prompts)
    torch.cuda.synchronize()
    per_prompt_ms = (time.perf_counter() - t0) / len(prompts) * 1e3
    assert out.shape == (len(prompts), 512, 4096) and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    _, mask = te.tokenize(prompts)
    for row, n in enumerate(mask.sum(1).tolist()):
        assert torch.count_nonzero(out[row, n:]) == 0 and bool((out[row, :n].abs().amax(-1) > 0).all())
    among = te.encode([prompts[2], prompts[0], prompts[4]])
    assert torch.equal(among[1], out[0]) and torch.equal(among[2], out[4])

    ids, mask = te.tokenize(prompts[:2])
    wan_sd = hf_to_wan_t5_state_dict(te.model.state_dict())
    ref = torch.stack([wan_t5_reference(wan_sd, ids[i : i + 1].cuda(), mask[i : i + 1].cuda(), num_heads=64)[0] for i in range(2)])
    diffs = []
    for row, n in enumerate(mask.sum(1).tolist()):
        a, r = out[row, :n].float(), ref[row, :n].float()
        diffs.append(((a - r).abs().max().item(), ((a - r).norm() / r.norm()).item(), torch.equal(out[row, :n], ref[row, :n])))
    peak_gib = torch.cuda.max_memory_allocated() / 2**30
    print("\n| umT5-XXL (random bf16) | value |\n|---|---|")
    print(f"| build + random init | {build_s:.1f} s |")
    print(f"| encode, per prompt (512 tokens, eager) | {per_prompt_ms:.1f} ms |")
    print(f"| peak GPU memory | {peak_gib:.1f} GiB |")
    for i, (mx, rel, same) in enumerate(diffs):
        print(f"| vs Wan T5 math, prompt {i}: max abs / rel L2 / bit-identical | {mx:.3g} / {rel:.3g} / {same} |")
    assert all(rel < 5e-2 for _, rel, _ in diffs)
