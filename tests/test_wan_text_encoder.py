"""umT5 text encoder behaviour beyond the golden: prompt cleaning, tokenization, truncation, the
context the DiT receives, checkpoint errors."""
from __future__ import annotations

import logging

import pytest
import torch

from turbodiffusion.models.wan.text_encoder import UMT5Encoder
from turbodiffusion.models.wan.tokenizer import EOS_ID, PAD_ID, ByteTokenizer, clean_prompt, tokenize_batch


@pytest.fixture(scope="module")
def encoder() -> UMT5Encoder:
    return UMT5Encoder.tiny(seed=0)


def test_clean_prompt():
    assert clean_prompt("  a\t\tred &amp;amp; blue\n fox ") == "a red & blue fox"


def test_tokenize_batch_pads_and_adds_eos():
    ids, mask = tokenize_batch(ByteTokenizer(), ["ab", " a  b "], max_len=6)
    expected = [ord("a") + 2, ord("b") + 2, EOS_ID, PAD_ID, PAD_ID, PAD_ID]
    assert ids[0].tolist() == expected
    assert ids[1].tolist() == [ord("a") + 2, ord(" ") + 2, ord("b") + 2, EOS_ID, PAD_ID, PAD_ID]
    assert mask.tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.int64


def test_tokenize_batch_truncates_with_warning(caplog):
    with caplog.at_level(logging.WARNING):
        ids, mask = tokenize_batch(ByteTokenizer(), ["x" * 600, "short"], max_len=512)
    assert ids[0, -1].item() == EOS_ID and ids[0, -2].item() == ord("x") + 2 and mask[0].all()
    assert "prompt 0 has 601 tokens" in caplog.text and "prompt 1" not in caplog.text


def test_tokenize_batch_rejects_a_string():
    with pytest.raises(TypeError, match="prompts"):
        tokenize_batch(ByteTokenizer(), "a cat", max_len=8)


def test_byte_tokenizer_fits_vocab():
    ids = ByteTokenizer().text_ids("漢字 ü \U0001F600")
    assert min(ids) >= 2 and max(ids) < ByteTokenizer.vocab_size


def test_encode_gives_zero_padded_context(encoder):
    prompts = ["a red fox in the snow", "a cat"]
    context = encoder.encode(prompts)
    assert context.shape == (2, 512, 64)
    lengths = [len(p.encode()) + 1 for p in prompts]  # + EOS
    for row, n in enumerate(lengths):
        assert torch.count_nonzero(context[row, n:]) == 0
        assert (context[row, :n].abs().sum(-1) > 0).all()
    # Each prompt's rows do not depend on the other prompts in the batch.
    alone = encoder.encode(prompts[1:])
    assert torch.allclose(alone[0], context[1], atol=1e-6, rtol=0)


def test_tiny_is_seeded():
    a, b = UMT5Encoder.tiny(0), UMT5Encoder.tiny(0)
    assert torch.equal(a.encode(["x"]), b.encode(["x"]))
    assert not torch.equal(a.encode(["x"]), UMT5Encoder.tiny(1).encode(["x"]))


def test_from_checkpoint_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="models_t5_umt5-xxl-enc-bf16.pth"):
        UMT5Encoder.from_checkpoint(tmp_path / "nope.pth", tmp_path)
    ckpt = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    ckpt.touch()
    with pytest.raises(FileNotFoundError, match="google/umt5-xxl"):
        UMT5Encoder.from_checkpoint(ckpt, tmp_path / "google" / "umt5-xxl")
