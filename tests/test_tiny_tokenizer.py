"""The shipped tiny tokenizer: loads offline, has its special tokens and ChatML, and rebuilds identically."""

from __future__ import annotations

import json

import pytest

from gpmctl.models.tiny_tokenizer import (
    SPECIAL_TOKENS,
    TINY_TOKENIZER_DIR,
    VOCAB_SIZE,
    build_tiny_tokenizer,
    load_tiny_tokenizer,
)


@pytest.fixture(scope="module")
def tok():
    return load_tiny_tokenizer()


def test_shipped_asset_loads_small_and_left_padded(tok):
    assert len(tok) == VOCAB_SIZE
    assert tok.padding_side == "left"
    assert tok.model_max_length == 512
    assert sum(p.stat().st_size for p in TINY_TOKENIZER_DIR.iterdir()) < 300_000


def test_tokenizer_config_uses_keys_transformers_4_and_5_both_read():
    config = json.loads((TINY_TOKENIZER_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert "extra_special_tokens" not in config


def test_special_tokens_are_single_ids(tok):
    assert [tok(s, add_special_tokens=False).input_ids for s in SPECIAL_TOKENS] == [[0], [1], [2], [3], [4]]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert set(SPECIAL_TOKENS) <= set(tok.all_special_tokens)


def test_chat_template_renders_chatml(tok):
    messages = [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "Go with jade."}]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nPick one.<|im_end|>\n<|im_start|>assistant\nGo with jade.<|im_end|>\n"
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nPick one.<|im_end|>\n<|im_start|>assistant\n"
    tokens = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False).input_ids)
    assert tokens[:3] == ["<|im_start|>", "user", "Ċ"]  # role names are single tokens


def test_unicode_round_trips(tok):
    text = 'Héllo wörld — 日本語 😀 naïve café\n\ttabs, 3.14 and "quotes"!'
    assert tok.decode(tok(text, add_special_tokens=False).input_ids) == text


def test_shipped_files_are_byte_identical_to_a_fresh_build(tmp_path):
    build_tiny_tokenizer(tmp_path)
    shipped = {p.name: p.read_bytes() for p in TINY_TOKENIZER_DIR.iterdir()}
    fresh = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert fresh.keys() == shipped.keys()
    # after a deliberate change of the corpus, rebuild with `python -m gpmctl.models.tiny_tokenizer`
    assert fresh["tokenizer.json"] == shipped["tokenizer.json"]
    assert fresh == shipped
