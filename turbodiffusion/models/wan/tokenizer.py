"""Prompt tokenization for the umT5 encoder: text cleaning, EOS, truncation and padding to a fixed length.

Two tokenizers share one batching rule (`tokenize_batch`): the real `google/umt5-xxl` tokenizer read
from a local folder with transformers (imported lazily, never downloading), and a byte-level one
for the tiny model, so that the tiny pipeline runs with no files at all.
"""
from __future__ import annotations

import html
import logging
import pathlib
import re
from typing import Protocol, Sequence

import torch

log = logging.getLogger(__name__)

PAD_ID = 0  # umT5's <pad>
EOS_ID = 1  # umT5's </s>, appended to every prompt

TOKENIZER_NAME = "google/umt5-xxl"
TOKENIZER_SOURCE = ("the google/umt5-xxl tokenizer files (the Wan2.1 model folders ship them in their "
                    "google/umt5-xxl/ subfolder; also on Hugging Face as google/umt5-xxl)")


class Tokenizer(Protocol):
    def text_ids(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens."""


def clean_prompt(text: str) -> str:
    """The reference's "whitespace" cleaning: ftfy's repair of broken unicode (when ftfy is installed),
    HTML entities unescaped twice, runs of whitespace collapsed to one space, ends stripped."""
    try:
        import ftfy
        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; ordinary prompts are unchanged by it
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def tokenize_batch(tokenizer: Tokenizer, prompts: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean and tokenize `prompts`, append EOS, truncate to `max_len` (EOS kept last, with a logged
    warning), pad with PAD_ID. Returns ids and mask (1 on real tokens), both int64 [B, max_len]."""
    if isinstance(prompts, str):
        raise TypeError("prompts: expected a list of strings, got one str")
    if max_len < 1:
        raise ValueError(f"max_len: expected >= 1, got {max_len}")
    ids = torch.full((len(prompts), max_len), PAD_ID, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        tokens = tokenizer.text_ids(clean_prompt(prompt)) + [EOS_ID]
        if len(tokens) > max_len:
            log.warning("prompt %d has %d tokens (EOS included), more than %d: truncated to its first %d "
                        "tokens + EOS", row, len(tokens), max_len, max_len - 1)
            tokens = tokens[:max_len - 1] + [EOS_ID]
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
        mask[row, :len(tokens)] = 1
    return ids, mask


class ByteTokenizer:
    """Tiny-model tokenizer: UTF-8 bytes, id = byte + 2 (ids 0 and 1 are PAD and EOS).

    UTF-8 never contains the bytes 0xFE and 0xFF, so every id fits a vocabulary of 256.
    """

    vocab_size = 256

    def text_ids(self, text: str) -> list[int]:
        return [b + 2 for b in text.encode("utf-8")]


class UMT5Tokenizer:
    """The google/umt5-xxl SentencePiece tokenizer, loaded from a local folder with transformers."""

    def __init__(self, folder):
        folder = pathlib.Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer_dir: {TOKENIZER_NAME} tokenizer folder {str(folder)!r} not found; "
                                    f"expected {TOKENIZER_SOURCE}")
        try:
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("the umT5 tokenizer needs transformers (pip install transformers sentencepiece)") from e
        self._tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        if (self._tok.pad_token_id, self._tok.eos_token_id) != (PAD_ID, EOS_ID):
            raise ValueError(f"tokenizer_dir: expected a umT5 tokenizer with pad/eos ids {(PAD_ID, EOS_ID)}, "
                             f"got {(self._tok.pad_token_id, self._tok.eos_token_id)} from {str(folder)!r}")

    def text_ids(self, text: str) -> list[int]:
        return self._tok(text, add_special_tokens=False).input_ids
