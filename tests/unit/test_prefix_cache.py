"""The per-tenant prefix cache on its own: what a lookup may return, and eviction."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from services.inference_worker.engine import prefix_cache
from services.inference_worker.engine.prefix_cache import PrefixCache

BLOCK = 4


def kv_of(prompt: list[int]) -> Callable[[int, int], torch.Tensor]:
    """KV for `prompt` as the engine would offer it: each position holds its token."""
    values = torch.tensor(prompt, dtype=torch.float32).view(1, 1, 1, -1, 1).expand(2, 2, 1, -1, 3)
    return lambda start, end: values[:, :, :, start:end]


def tokens_in(blocks: list[torch.Tensor]) -> list[int]:
    return [int(t) for block in blocks for t in block[0, 0, 0, :, 0]]


def test_a_lookup_returns_the_longest_cached_prefix_of_the_same_tenant() -> None:
    cache = PrefixCache(capacity_tokens=64, block_tokens=BLOCK)
    stored = list(range(100, 110))  # two full blocks and two tokens
    cache.store("acme", stored, kv_of(stored))
    assert cache.cached_tokens == 8
    prompt = [*stored[:8], 7, 7, 7]
    assert tokens_in(cache.lookup("acme", prompt)) == stored[:8]
    assert tokens_in(cache.lookup("acme", [*stored[:4], 1, 2, 3, 4, 5])) == stored[:4]
    assert cache.lookup("acme", [1, *stored]) == []
    assert (cache.stats.lookups, cache.stats.hits, cache.stats.hit_tokens) == (3, 2, 12)


def test_the_last_prompt_token_is_never_served_from_the_cache() -> None:
    cache = PrefixCache(capacity_tokens=64, block_tokens=BLOCK)
    prompt = list(range(8))
    cache.store("acme", prompt, kv_of(prompt))
    assert tokens_in(cache.lookup("acme", prompt)) == prompt[:4]


@pytest.mark.parametrize("other", ["globex", "", "acme "])
def test_another_tenant_never_finds_what_a_tenant_stored(other: str) -> None:
    cache = PrefixCache(capacity_tokens=64, block_tokens=BLOCK)
    prompt = list(range(12))
    cache.store("acme", prompt, kv_of(prompt))
    assert cache.lookup(other, prompt) == []
    assert cache.stats.hits == 0


def test_even_colliding_keys_never_return_another_prefix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prefix_cache, "_chain", lambda parent, tokens: b"same key")
    monkeypatch.setattr(prefix_cache, "_root", lambda tenant: b"same root")
    cache = PrefixCache(capacity_tokens=64, block_tokens=BLOCK)
    cache.store("acme", [1, 2, 3, 4, 5], kv_of([1, 2, 3, 4, 5]))
    assert cache.lookup("globex", [1, 2, 3, 4, 5]) == []  # same tokens, other tenant
    assert cache.lookup("acme", [9, 2, 3, 4, 5]) == []  # same key, other tokens
    assert tokens_in(cache.lookup("acme", [1, 2, 3, 4, 5])) == [1, 2, 3, 4]


def test_eviction_stays_within_capacity_and_drops_the_least_recent_leaves_first() -> None:
    cache = PrefixCache(capacity_tokens=3 * BLOCK, block_tokens=BLOCK)
    shared = [1, 1, 1, 1]
    first, second = [*shared, 2, 2, 2, 2, 0], [*shared, 3, 3, 3, 3, 0]
    cache.store("acme", first, kv_of(first))
    cache.store("acme", second, kv_of(second))
    assert cache.cached_tokens == 3 * BLOCK and cache.stats.evicted_blocks == 0
    cache.lookup("acme", first)  # second is now the least recently used
    third = [*shared, 4, 4, 4, 4, 0]
    cache.store("acme", third, kv_of(third))
    assert cache.cached_tokens == 3 * BLOCK and cache.stats.evicted_blocks == 1
    assert tokens_in(cache.lookup("acme", second)) == shared  # its leaf went, not the root
    assert tokens_in(cache.lookup("acme", first)) == first[:8]
    assert tokens_in(cache.lookup("acme", third)) == third[:8]


def test_a_prompt_longer_than_the_cache_keeps_its_first_blocks() -> None:
    cache = PrefixCache(capacity_tokens=2 * BLOCK, block_tokens=BLOCK)
    prompt = list(range(20))
    cache.store("acme", prompt, kv_of(prompt))
    assert tokens_in(cache.lookup("acme", prompt)) == prompt[:8]


def test_stored_kv_is_a_copy_the_caller_may_overwrite() -> None:
    cache = PrefixCache(capacity_tokens=64, block_tokens=BLOCK)
    slot = torch.tensor([5.0, 6, 7, 8, 9]).view(1, 1, 1, -1, 1).repeat(2, 2, 1, 1, 3)
    cache.store("acme", [5, 6, 7, 8, 9], lambda start, end: slot[:, :, :, start:end])
    slot.zero_()  # the engine's slot is reused by the next sequence
    assert tokens_in(cache.lookup("acme", [5, 6, 7, 8, 9])) == [5, 6, 7, 8]


def test_zero_capacity_stores_nothing() -> None:
    cache = PrefixCache(capacity_tokens=0, block_tokens=BLOCK)
    cache.store("acme", list(range(12)), kv_of(list(range(12))))
    assert cache.cached_tokens == 0 and cache.lookup("acme", list(range(12))) == []


def test_bad_sizes_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="capacity_tokens"):
        PrefixCache(capacity_tokens=-1)
    with pytest.raises(ValueError, match="block_tokens"):
        PrefixCache(capacity_tokens=64, block_tokens=0)
