"""Word matching for knowledge search: a small tokenizer and BM25 over passages.

Dense vectors find paraphrases but miss exact terms a customer types (an order number, a
product name, "VAT"); BM25 (Robertson and Zaragoza, "The Probabilistic Relevance
Framework: BM25 and Beyond", 2009) finds those. Its statistics are kept in memory and
rebuilt from the passages' texts when an index is loaded, so nothing lexical is stored.

The tokenizer is deliberately light, English-leaning and dependency-free: casefolded
unicode words, a short stopword list, and a suffix stemmer for plurals, -ing and -ed, so
that "refunds", "refunded" and "refunding" all match "refund".
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

K1 = 1.5  # how quickly repeating a term stops adding to a passage's score
B = 0.75  # how much a long passage is discounted for having more words to match with

STOPWORDS = frozenset({
    "a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are",
    "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each",
    "few", "for", "from", "further", "get", "got", "had", "has", "have", "having", "he",
    "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its",
    "itself", "just", "let", "me", "more", "most", "my", "no", "nor", "not", "now", "of",
    "off", "on", "once", "only", "or", "other", "our", "ours", "out", "over", "own",
    "please", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their",
    "theirs", "them", "then", "there", "these", "they", "this", "those", "through", "to",
    "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where",
    "which", "while", "who", "whom", "why", "will", "with", "would", "yes", "you", "your",
    "yours",
    # What customers wrap a question in; a passage sharing only these is not related.
    "hello", "hey", "hi", "know", "like", "thank", "thanks", "tell", "want",
})  # fmt: skip
_WORD = re.compile(r"\w+")
_VOWELS = frozenset("aeiouy")


def stem(word: str) -> str:
    """A light suffix stemmer (plurals, -ing, -ed); what matters is that forms of one word
    meet, not that the stem is a real word: "charges" and "charging" both become "charg"."""
    if len(word) <= 3 or not word.isalpha():
        return word  # short words, numbers and codes ("a12b") are matched as they are
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        base = word[: -len(suffix)]
        # Only when a syllable is left: "shipping" -> "ship", but "bring" and "need" stay.
        if word.endswith(suffix) and len(base) >= 3 and _VOWELS.intersection(base):
            word = base
            break
    if len(word) > 3 and word.endswith("e") and not word.endswith("ee"):
        word = word[:-1]
    # Undoubled for every word, not only after a suffix, so that "bill" meets "billing"
    # and "cancel" meets "cancelled".
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in _VOWELS | {"s"}:
        word = word[:-1]
    return word


def tokens(text: str) -> list[str]:
    """The searchable terms of `text`, in order: casefolded, stopwords dropped, stemmed."""
    stems = (stem(word) for word in _WORD.findall(text.casefold()) if word not in STOPWORDS)
    return [term for term in stems if term not in STOPWORDS]  # also "wanted", "thanked"


def content_words(text: str) -> set[str]:
    """The terms that carry meaning: what a question and a passage must share to relate."""
    return {term for term in tokens(text) if len(term) >= 3}


class Bm25:
    """BM25 scores over a changing set of passages, each known by an integer id."""

    def __init__(self) -> None:
        self._terms: dict[int, Counter[str]] = {}
        self._lengths: dict[int, int] = {}
        self._postings: dict[str, set[int]] = {}
        self._total_length = 0

    def add(self, passage: int, text: str) -> None:
        """Make `passage` findable by the words of `text`."""
        terms = Counter(tokens(text))
        self._terms[passage] = terms
        self._lengths[passage] = sum(terms.values())
        self._total_length += self._lengths[passage]
        for term in terms:
            self._postings.setdefault(term, set()).add(passage)

    def remove(self, passage: int) -> None:
        """Forget `passage`; its words no longer count for any score."""
        terms = self._terms.pop(passage)
        self._total_length -= self._lengths.pop(passage)
        for term in terms:
            holders = self._postings[term]
            holders.discard(passage)
            if not holders:
                del self._postings[term]

    def scores(self, query: Iterable[str]) -> dict[int, float]:
        """Each passage sharing a term with `query` (terms, not text), and its BM25 score."""
        count = len(self._terms)
        if not count:
            return {}
        average_length = max(self._total_length / count, 1.0)
        result: dict[int, float] = {}
        for term in set(query):
            holders = self._postings.get(term, set())
            # Lucene's idf: never negative, so a very common term still counts a little.
            idf = math.log(1 + (count - len(holders) + 0.5) / (len(holders) + 0.5))
            for passage in holders:
                frequency = self._terms[passage][term]
                norm = 1 - B + B * self._lengths[passage] / average_length
                gain = idf * frequency * (K1 + 1) / (frequency + K1 * norm)
                result[passage] = result.get(passage, 0.0) + gain
        return result
