"""Pure helpers of the administration pages: the Admin API's messages as table rows,
form text as request fields, and the secrets a creation shows once. No I/O and no
clock of their own, so the unit tests need no servers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlencode

from gateway.auth.scopes import ADMIN, SCOPES
from llmos.errors import InvalidArgument
from llmos.v1 import admin_pb2

ADMIN_PATH = "/console/admin"


@dataclass(frozen=True)
class RowAction:
    """A button that posts `fields` to `path` once the person has confirmed."""

    path: str
    fields: tuple[tuple[str, str], ...]
    label: str
    confirm: str


@dataclass(frozen=True)
class Row:
    """A table row: its text cells and, last, the one thing a person may do to it."""

    cells: tuple[str, ...]
    action: RowAction | None = None


def section_path(section: str = "", tenant: str = "") -> str:
    """The address of an administration section, showing `tenant` if one is named."""
    path = f"{ADMIN_PATH}/{section}" if section else ADMIN_PATH
    return f"{path}?{urlencode({'tenant': tenant})}" if tenant else path


def limit(value: int) -> str:
    """A per-minute limit as a person reads it (0 means no limit)."""
    return f"{value:,}" if value else "unlimited"


def utc(seconds: int) -> str:
    """A moment in UTC to the minute, or "-" when unset."""
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def scope_list(scopes: Iterable[str]) -> str:
    return ", ".join(scopes) or "-"


# -- tables ------------------------------------------------------------------------------

TENANT_HEADERS = ("Tenant", "Requests per minute", "Tokens per minute", "Critical priority")
KEY_HEADERS = ("Key id", "Name", "Scopes", "Expires", "Limits", "Created", "Created by", "")
CLIENT_HEADERS = ("Client id", "Name", "Scopes", "Requests per minute", "Tokens per minute", "")
USER_HEADERS = ("User", "Scopes", "")
BLOCK_HEADERS = ("Blocked", "Until", "Why", "Signal", "Blocked by", "Since", "")


def tenant_rows(tenants: Iterable[admin_pb2.Tenant]) -> list[tuple[str, ...]]:
    return [
        (
            t.name,
            limit(t.quota.requests_per_minute),
            limit(t.quota.tokens_per_minute),
            "granted" if t.critical_priority else "no",
        )
        for t in tenants
    ]


def key_rows(keys: Iterable[admin_pb2.ApiKey], now: float) -> list[Row]:
    """API keys, each with its revoke button; an expired key says so (it is refused)."""
    rows = []
    for k in keys:
        expires = "never"
        if k.expires_at.seconds:
            expires = utc(k.expires_at.seconds)
            if k.expires_at.seconds <= now:
                expires += " (expired)"
        limits = "tenant's only"
        if k.quota.requests_per_minute or k.quota.tokens_per_minute:
            limits = (
                f"{limit(k.quota.requests_per_minute)} requests, "
                f"{limit(k.quota.tokens_per_minute)} tokens per minute"
            )
        revoke = RowAction(
            path=f"{ADMIN_PATH}/api-keys/revoke",
            fields=(("key_id", k.key_id), ("tenant", k.tenant)),
            label="Revoke",
            confirm=f"Revoke API key {k.name!r} ({k.key_id})? Programs using it are "
            "refused from their next call.",
        )
        cells = (k.key_id, k.name, scope_list(k.scopes), expires, limits,
                 utc(k.created_at.seconds), k.created_by or "-")  # fmt: skip
        rows.append(Row(cells, revoke))
    return rows


def client_rows(clients: Iterable[admin_pb2.Client]) -> list[Row]:
    """Clients, each with its delete button."""
    rows = []
    for c in clients:
        delete = RowAction(
            path=f"{ADMIN_PATH}/clients/delete",
            fields=(("client_id", c.client_id), ("tenant", c.tenant)),
            label="Delete",
            confirm=f"Delete client {c.name!r} ({c.client_id})? Its secret stops working.",
        )
        cells = (c.client_id, c.name, scope_list(c.scopes),
                 limit(c.quota.requests_per_minute), limit(c.quota.tokens_per_minute))  # fmt: skip
        rows.append(Row(cells, delete))
    return rows


def user_rows(users: Iterable[admin_pb2.User], me: str) -> list[Row]:
    """People, each with a delete button except the person signed in (deleting oneself
    would end the session mid-page)."""
    rows = []
    for u in users:
        delete = None
        if u.username != me:
            delete = RowAction(
                path=f"{ADMIN_PATH}/users/delete",
                fields=(("username", u.username), ("tenant", u.tenant)),
                label="Delete",
                confirm=f"Delete user {u.username!r}? They can no longer sign in.",
            )
        rows.append(Row((u.username, scope_list(u.scopes)), delete))
    return rows


def block_rows(blocks: Iterable[admin_pb2.BlockEntry]) -> list[Row]:
    """Blocks in force, each with its unblock button."""
    rows = []
    for b in blocks:
        kind = b.target.WhichOneof("target") or ""
        value = getattr(b.target, kind, "") if kind else ""
        what = f"address {value}" if kind == "address" else value
        unblock = RowAction(
            path=f"{ADMIN_PATH}/blocks/unblock",
            fields=(("target", value),),
            label="Unblock",
            confirm=f"Lift the block of {what}?",
        )
        cells = (what, utc(b.until.seconds), b.reason or "-", b.signal or "-",
                 b.blocked_by or "-", utc(b.since.seconds))  # fmt: skip
        rows.append(Row(cells, unblock))
    return rows


# -- form fields -------------------------------------------------------------------------


def whole_number(form: Mapping[str, str], name: str) -> int | None:
    """The form's `name` as a whole number; None when left empty."""
    text = form.get(name, "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(name, "must be a whole number") from None


def quota_of(
    form: Mapping[str, str], requests: str, tokens: str, required: bool = False
) -> admin_pb2.Quota | None:
    """The quota two form fields give; None when both are empty and not `required`
    (the gateway's defaults then apply). An empty field of a quota given means 0."""
    rpm, tpm = whole_number(form, requests), whole_number(form, tokens)
    if rpm is None and tpm is None:
        if required:
            raise InvalidArgument(requests, "give requests or tokens per minute (0: unlimited)")
        return None
    return admin_pb2.Quota(requests_per_minute=rpm or 0, tokens_per_minute=tpm or 0)


def block_target(text: str) -> admin_pb2.BlockTarget:
    """What a person typed to block: `user:<name>` or `client:<id>` is a principal,
    anything else an address (IPv6 has colons too, but never these prefixes)."""
    text = text.strip()
    if text.startswith(("user:", "client:")):
        return admin_pb2.BlockTarget(principal=text)
    return admin_pb2.BlockTarget(address=text)


def scope_choices(held: Iterable[str], for_api_key: bool = False) -> list[tuple[str, str]]:
    """The scopes a person may grant (only those they hold), with what each allows. API
    keys never carry `admin`: a bearer that may not expire must not administer."""
    mine = set(held)
    return [
        (scope, about)
        for scope, about in SCOPES.items()
        if scope in mine and not (for_api_key and scope == ADMIN)
    ]


#: lifetimes offered for an API key: (seconds, label); 0 never expires
EXPIRY_CHOICES = (
    ("0", "Never"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
    ("7776000", "90 days"),
    ("31536000", "1 year"),
)
#: how long a block lasts: (seconds, label); 0 is the gateway's block lifetime
BLOCK_CHOICES = (
    ("0", "The gateway's default"),
    ("900", "15 minutes"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
)


def seconds_of(form: Mapping[str, str], name: str) -> int:
    """A duration field's seconds (0 when empty)."""
    return whole_number(form, name) or 0


# -- what a creation shows once ------------------------------------------------------------

_FLASH = "admin."
_SECRET = _FLASH + "secret."
_NOTICE = _FLASH + "notice"

#: the secrets a page may show once, by the id of the element that shows them
SECRET_LABELS = {
    "new-api-key": "The new API key",
    "new-client-secret": "The new client's secret",
    "new-totp-secret": "The new user's TOTP secret (type it into an authenticator app)",
    "new-totp-uri": "The new user's otpauth URI (for apps that import a link)",
}


@dataclass(frozen=True)
class Secret:
    element_id: str
    label: str
    value: str


@dataclass
class Shown:
    """What the last change left to say: a sentence, and secrets shown this once."""

    notice: str = ""
    secrets: list[Secret] = field(default_factory=list)


def flash(
    store: MutableMapping[str, str], notice: str, secrets: Mapping[str, str] | None = None
) -> None:
    """Leave `notice` and `secrets` (by element id) for the page after the redirect."""
    store[_NOTICE] = notice
    for element_id, value in (secrets or {}).items():
        if element_id not in SECRET_LABELS:
            raise ValueError(f"no label for secret {element_id!r}")
        store[_SECRET + element_id] = value


def take_flash(store: MutableMapping[str, str]) -> Shown:
    """What `flash` left, removed so that a reload no longer shows it."""
    shown = Shown(notice=store.pop(_NOTICE, ""))
    for element_id, label in SECRET_LABELS.items():
        value = store.pop(_SECRET + element_id, "")
        if value:
            shown.secrets.append(Secret(element_id, label, value))
    return shown
