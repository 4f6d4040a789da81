"""GGUF import: the folder it writes is a Hugging Face model that `transformers` loads
and agrees with, logit for logit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from llmos.model.folder import load_model, read_config
from llmos.model.gguf_import import GGUFImportError, import_gguf
from llmos.model.text import IncrementalDetokenizer, TextCodec
from tests.reference import load_reference

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


def test_import_writes_a_complete_hugging_face_folder(model_folder: Path) -> None:
    config = read_config(model_folder)
    assert config.parameter_count == 134_515_008  # SmolLM2-135M
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (30, 576, 49152)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    tokenizer_config = json.loads((model_folder / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]


def test_tokenizer_and_chat_template_match_transformers(model_folder: Path) -> None:
    codec = TextCodec(model_folder)
    reference = AutoTokenizer.from_pretrained(model_folder)
    prompt = codec.render_chat(CHAT)
    assert prompt == reference.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    for text in [prompt, "naïve café 1234567 — ünïcödé 🙂 tabs\tand\nnewlines", "   spaces"]:
        assert codec.encode(text) == reference(text, add_special_tokens=False).input_ids
        assert codec.decode(codec.encode(text)) == text.replace("<|im_start|>", "").replace(
            "<|im_end|>", ""
        )


def test_streaming_detokenizer_never_splits_a_character(model_folder: Path) -> None:
    codec = TextCodec(model_folder)
    text = "emoji 🙂🚀 and 中文字符"
    detokenizer = IncrementalDetokenizer(codec)
    pieces = [detokenizer.push(token) for token in codec.encode(text)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_logits_equal_the_transformers_reference(model_folder: Path) -> None:
    ours = load_model(model_folder)
    reference = load_reference(model_folder)
    codec = TextCodec(model_folder)
    ids = torch.tensor([codec.encode(codec.render_chat(CHAT))])
    with torch.no_grad():
        difference = (ours(ids) - reference(ids).logits).abs().max().item()
    assert difference < 1e-4


def test_a_file_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises((GGUFImportError, ValueError)):
        import_gguf(bogus, tmp_path / "out")
    assert not (tmp_path / "out").exists()
