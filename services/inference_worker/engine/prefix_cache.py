"""A per-tenant prefix cache: prompts that share a prefix reuse its keys and values.

Why per tenant: a cache hit shortens time to first token, so a cache shared across
tenants lets one tenant learn whether another sent a given prompt (vLLM's
CVE-2025-46570). Every key here starts from the tenant, so a lookup can only ever find
what the same tenant stored.

The cache is block-granular (vLLM's automatic prefix caching): a prompt's full blocks of
`block_tokens` tokens are keyed by a hash chain, key_i = H(tenant, key_{i-1}, tokens_i),
so a key names its whole prefix and a lookup walks the chain to the longest cached
prefix. Each entry keeps its tenant, parent key and tokens and a lookup compares them, so
even a hash collision can never return another prefix's KV. Entries own their KV
([layer, key|value, kv_head, block_tokens, head_dim]); the total is bounded by a
capacity in tokens with least-recently-used eviction. A chain is always touched from its
last block back to its first, so a parent is more recent than its children and eviction
takes leaves first: no cached block is left unreachable behind an evicted parent.

Plain Python and torch, no clock, no I/O; the engine decides when to look up and store.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

DEFAULT_BLOCK_TOKENS = 16


@dataclass
class PrefixStats:
    """Counters a user (or a test) can read to see what the cache did."""

    lookups: int = 0
    hits: int = 0
    hit_tokens: int = 0
    stored_blocks: int = 0
    evicted_blocks: int = 0


@dataclass(frozen=True)
class _Block:
    tenant: str
    parent: bytes
    tokens: tuple[int, ...]
    kv: Tensor


class PrefixCache:
    """Keys and values of prompt prefixes, per tenant, bounded by `capacity_tokens`."""

    def __init__(self, capacity_tokens: int, block_tokens: int = DEFAULT_BLOCK_TOKENS) -> None:
        if block_tokens < 1:
            raise ValueError(f"block_tokens must be at least 1, got {block_tokens}")
        if capacity_tokens < 0:
            raise ValueError(f"capacity_tokens must not be negative, got {capacity_tokens}")
        self.block_tokens = block_tokens
        self.capacity_blocks = capacity_tokens // block_tokens
        self.stats = PrefixStats()
        self._blocks: OrderedDict[bytes, _Block] = OrderedDict()  # oldest first

    @property
    def cached_tokens(self) -> int:
        """Tokens whose KV the cache holds now."""
        return len(self._blocks) * self.block_tokens

    def lookup(self, tenant: str, prompt: list[int]) -> list[Tensor]:
        """KV blocks of the longest cached prefix of `prompt` for `tenant`, first to last.

        At most len(prompt) - 1 tokens are covered: the last prompt token must still go
        through the model, whose logits choose the first output token.
        """
        self.stats.lookups += 1
        found: list[bytes] = []
        parent = _root(tenant)
        for tokens in self._full_blocks(prompt[:-1]):
            key = _chain(parent, tokens)
            block = self._blocks.get(key)
            if block is None or (block.tenant, block.parent, block.tokens) != (
                tenant,
                parent,
                tokens,
            ):
                break
            found.append(key)
            parent = key
        if found:
            self.stats.hits += 1
            self.stats.hit_tokens += len(found) * self.block_tokens
            self._touch(found)
        return [self._blocks[key].kv for key in found]

    def store(self, tenant: str, prompt: list[int], kv: Callable[[int, int], Tensor]) -> None:
        """Keep the full blocks of `prompt`; `kv(start, end)` gives those positions' KV.

        `kv` is called only for blocks not cached yet, and its result is copied, so the
        caller may pass a view of memory it reuses.
        """
        if self.capacity_blocks == 0:
            return
        chain: list[bytes] = []
        parent = _root(tenant)
        for index, tokens in enumerate(self._full_blocks(prompt)):
            if index == self.capacity_blocks:
                break  # a longer prefix than the whole cache would only evict itself
            key = _chain(parent, tokens)
            if key not in self._blocks:
                self._evict_for(1, keep=chain)
                start = index * self.block_tokens
                block_kv = kv(start, start + self.block_tokens).clone()
                self._blocks[key] = _Block(tenant, parent, tokens, block_kv)
                self.stats.stored_blocks += 1
            chain.append(key)
            parent = key
        self._touch(chain)

    def _full_blocks(self, tokens: list[int]) -> list[tuple[int, ...]]:
        size = self.block_tokens
        return [tuple(tokens[i : i + size]) for i in range(0, len(tokens) - size + 1, size)]

    def _touch(self, chain: list[bytes]) -> None:
        """Mark a chain used, last block first, so parents stay newer than children."""
        for key in reversed(chain):
            self._blocks.move_to_end(key)

    def _evict_for(self, count: int, keep: list[bytes]) -> None:
        """Drop least recently used blocks until `count` more fit, sparing `keep`."""
        spared = set(keep)
        while len(self._blocks) + count > self.capacity_blocks:
            victim = next(key for key in self._blocks if key not in spared)
            del self._blocks[victim]
            self.stats.evicted_blocks += 1


def _root(tenant: str) -> bytes:
    """The chain's start for one tenant: every key below depends on it."""
    return hashlib.blake2b(tenant.encode(), digest_size=16, person=b"llmos-prefix").digest()


def _chain(parent: bytes, tokens: tuple[int, ...]) -> bytes:
    data = parent + b"".join(token.to_bytes(4, "little") for token in tokens)
    return hashlib.blake2b(data, digest_size=16).digest()
