"""How many bytes each tenant may store: a default for all, an admin-set limit for some.

The limit is checked when an upload starts (its declared size counts in full), not as
bytes arrive, so an upload that was admitted is never cut off half way; a resumed upload
was admitted already and is not checked again. An upload in progress keeps its declared
size reserved until it becomes a blob, is discarded, or expires idle: otherwise several
uploads started together would each see the same free room and all be admitted. (The
check and the reservation are one step: `Transfers` admits uploads one at a time.)
"""

from __future__ import annotations

from llmos.errors import InvalidArgument, ResourceExhausted
from services.storage.checks import check_tenant
from services.storage.store import Store


class Quotas:
    """Tenant storage quotas over the store's metadata."""

    def __init__(self, store: Store, default_bytes: int) -> None:
        self._store = store
        self._default = default_bytes

    def make_room(self, tenant: str, size: int) -> None:
        """Refuse a new upload of `size` bytes that would take `tenant` over its quota."""
        meta = self._store.meta
        stored, reserved = meta.tenant_bytes(tenant), meta.uploading_bytes(tenant)
        limit = meta.quota(tenant, self._default)
        if stored + reserved + size > limit:
            raise ResourceExhausted(
                f"tenant {tenant!r} would store {stored + reserved + size} bytes, over its "
                f"quota of {limit} ({stored} stored, {reserved} reserved by uploads in "
                f"progress, {size} asked for)"
            )

    def set(self, tenant: str, limit: int) -> int:
        """Give `tenant` a quota of `limit` bytes; returns the bytes it stores now."""
        tenant = check_tenant(tenant)
        if limit < 0:
            raise InvalidArgument("bytes", "must not be negative")
        self._store.meta.set_quota(tenant, limit)
        self._store.record(tenant, "storage.quota.set", f"tenant/{tenant}", f"{limit} bytes")
        return self._store.meta.tenant_bytes(tenant)
