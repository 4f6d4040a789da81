"""The audit page (being written)."""

from __future__ import annotations

from gateway.console.app import Console


def register(console: Console) -> None:
    """Nothing yet."""
