"""Text in and out of a model: tokenizer, chat template, streaming detokenization.

Uses the `tokenizers` library and Jinja2 directly, so serving never needs `transformers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer

from llmos.model.names import GENERATION_CONFIG, TOKENIZER, TOKENIZER_CONFIG

REPLACEMENT_CHAR = "\ufffd"


class TextCodec:
    """A model's tokenizer plus the facts around it: special tokens, chat template."""

    def __init__(self, folder: Path) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        config: dict[str, Any] = json.loads((folder / TOKENIZER_CONFIG).read_text())
        self.chat_template: str | None = config.get("chat_template")
        self.bos_token: str = config.get("bos_token") or ""
        self.eos_token: str = config.get("eos_token") or ""
        generation: dict[str, Any] = {}
        if (folder / GENERATION_CONFIG).is_file():
            generation = json.loads((folder / GENERATION_CONFIG).read_text())
        eos = generation.get("eos_token_id", self.token_id(self.eos_token))
        ids = eos if isinstance(eos, list) else [eos]
        self.stop_token_ids: frozenset[int] = frozenset(int(i) for i in ids if i is not None)
        self._template = _compile_template(self.chat_template) if self.chat_template else None
        decoder = json.loads(self.tokenizer.to_str()).get("decoder") or {}
        self._byte_level = decoder.get("type") == "ByteLevel"
        added = self.tokenizer.get_added_tokens_decoder()
        #: added special tokens are spelt as themselves, not in the byte alphabet
        self._special_ids = frozenset(int(i) for i, t in added.items() if t.special)

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce."""
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int | None:
        """Id of a literal token, or None."""
        if not token:
            return None
        found = self.tokenizer.token_to_id(token)
        return None if found is None else int(found)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special-token strings in it are recognised."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: list[int]) -> str:
        """Text of `ids`, without special tokens."""
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes one token stands for. A byte-level BPE token may be part of a
        UTF-8 character, which decoding it alone would turn into U+FFFD; its vocabulary
        entry spells the bytes in GPT-2's byte-to-character alphabet, read back here."""
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level and token_id not in self._special_ids:
            table = _gpt2_byte_of()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        return piece.encode() if token_id in self._special_ids else self.decode([token_id]).encode()

    def render_chat(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str:
        """The prompt a chat model expects for `messages` (roles and contents)."""
        if self._template is None:
            raise ValueError("this model has no chat template")
        return str(
            self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        )


def _compile_template(source: str) -> jinja2.Template:
    """Compile a chat template the way Hugging Face does: sandboxed, trimmed blocks."""

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    return env.from_string(source)


@cache
def _gpt2_byte_of() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for
    themselves, the rest are shifted to code points from 256 up."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


@dataclass
class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas, never splitting a character.

    A token can end in the middle of a multi-byte UTF-8 character; such a tail decodes
    to U+FFFD and is held back until the next token completes it.
    """

    codec: TextCodec
    ids: list[int] = field(default_factory=list)
    text: str = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the newly completed text (possibly empty)."""
        self.ids.append(token_id)
        decoded = self.codec.decode(self.ids)
        if decoded.endswith(REPLACEMENT_CHAR):
            return ""
        delta = decoded[len(self.text) :]
        self.text = decoded
        return delta
