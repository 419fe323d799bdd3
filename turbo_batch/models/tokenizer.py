"""Prompt cleaning and tokenizers for the umT5 text encoder.

Two tokenizers with one call signature, `tokenizer(texts, max_length) -> (input_ids, attention_mask)`, both
[B, max_length] int64, right-padded with 0, an end-of-sequence token 1 after the real tokens, truncation that
keeps the end token:
- `HFTokenizer`: the real `google/umt5-xxl` sentencepiece tokenizer (what Wan and TurboDiffusion use).
- `TinyTokenizer`: a hashing tokenizer that needs no download, for the tiny presets and tests.
"""
from __future__ import annotations

import hashlib
import html
import re
from pathlib import Path
from typing import Sequence

import torch

PAD_ID = 0
EOS_ID = 1

_WHITESPACE = re.compile(r"\s+")
_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]")


def clean_prompt(text: str) -> str:
    """Wan's prompt cleaning ('whitespace' mode): ftfy fix, HTML-unescape twice, collapse whitespace, strip.

    The Turbo checkpoints saw prompts cleaned this way, so the same text must reach the tokenizer here.
    ftfy is optional (as in diffusers): without it, mojibake in a prompt is left as is.
    """
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return _WHITESPACE.sub(" ", text).strip()


def _as_list(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


class TinyTokenizer:
    """Lowercased words and punctuation marks hashed into ids [2, vocab_size); 0 = pad, 1 = eos.

    sha256, not Python's salted `hash()`, so the same prompt gives the same ids in every process and on
    every machine (the tiny presets must render identical frames everywhere).
    """

    def __init__(self, vocab_size: int, max_length: int | None = None):
        if vocab_size < 3:
            raise ValueError(f"TinyTokenizer needs vocab_size >= 3 (pad, eos and one word id), got {vocab_size}")
        self.vocab_size = vocab_size
        self.max_length = max_length

    def token_id(self, token: str) -> int:
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        return 2 + int.from_bytes(digest[:8], "little") % (self.vocab_size - 2)

    def encode(self, text: str) -> list[int]:
        """Ids of one text without padding or eos."""
        return [self.token_id(t) for t in _WORD_OR_PUNCT.findall(text.lower())]

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        length = _resolve_length(max_length, self.max_length)
        texts = _as_list(texts)
        ids = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.long)
        for row, text in enumerate(texts):
            tokens = self.encode(text)[: length - 1] + [EOS_ID]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        return ids, mask


class HFTokenizer:
    """`transformers.AutoTokenizer` for `google/umt5-xxl` (hub id or local directory), called like Wan calls it:
    padding to max_length, truncation, special tokens added (the eos `</s>`)."""

    def __init__(self, name_or_path: str | Path, max_length: int | None = 512):
        from transformers import AutoTokenizer

        self.name_or_path = str(name_or_path)
        self.max_length = max_length
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
        except Exception as e:  # offline, missing files: say what to do
            from .checkpoints import CheckpointError

            raise CheckpointError(
                f"tokenizer {self.name_or_path!r}: cannot load ({type(e).__name__}: {e}). Download the tokenizer "
                f"files of google/umt5-xxl where you are online and set checkpoints.tokenizer.path=/local/dir."
            ) from e

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        length = _resolve_length(max_length, self.max_length)
        out = self.tokenizer(
            _as_list(texts),
            padding="max_length",
            truncation=True,
            max_length=length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"].long(), out["attention_mask"].long()


def _resolve_length(call_length: int | None, default_length: int | None) -> int:
    length = call_length if call_length is not None else default_length
    if length is None or int(length) < 1:
        raise ValueError(f"tokenizer max_length must be a positive integer, got {length!r}")
    return int(length)
