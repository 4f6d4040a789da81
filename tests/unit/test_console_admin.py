"""The console's administration pages without servers: the Admin API's messages as the
rows a person reads, form text as request fields, a refused form's errors beside the
right field, the secrets a creation shows exactly once, and the templates' controls."""

from __future__ import annotations

import html
import re
import urllib.parse

import pytest

from gateway.auth.scopes import ADMIN, INFERENCE, MODELS_READ, SCOPES
from gateway.console.pages.admin_common import refusal, tabs
from gateway.console.pages.admin_rows import (
    BLOCK_CHOICES,
    BLOCK_HEADERS,
    CLIENT_HEADERS,
    EXPIRY_CHOICES,
    KEY_HEADERS,
    TENANT_HEADERS,
    USER_HEADERS,
    block_rows,
    block_target,
    client_rows,
    flash,
    key_rows,
    limit,
    quota_of,
    scope_choices,
    section_path,
    take_flash,
    tenant_rows,
    user_rows,
)
from gateway.web.render import render_text
from llmos.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from llmos.timestamps import timestamp
from llmos.v1 import admin_pb2

NOW = 1_750_000_000.0


def _frame(**context: object) -> dict[str, object]:
    """What every administration template gets from the layout and `render`."""
    base: dict[str, object] = {
        "nav": [], "current": "/console/admin", "user": "root", "tenant": "system",
        "csrf": "CSRF-T", "tabs": tabs("", True), "system_admin": True,
        "shown": take_flash({}),
    }  # fmt: skip
    base.update(context)
    return base


# -- rows --------------------------------------------------------------------------------


def test_a_tenant_row_says_unlimited_for_zero_and_whether_critical_is_granted() -> None:
    tenant = admin_pb2.Tenant(
        name="acme",
        quota=admin_pb2.Quota(requests_per_minute=1200, tokens_per_minute=0),
        critical_priority=True,
    )
    assert tenant_rows([tenant]) == [("acme", "1,200", "unlimited", "granted")]
    assert len(TENANT_HEADERS) == 4


def test_a_key_row_shows_expiry_limits_and_a_revoke_that_names_the_key() -> None:
    key = admin_pb2.ApiKey(
        key_id="k0123", tenant="acme", name="ci bot", scopes=[INFERENCE, MODELS_READ],
        created_at=timestamp(NOW - 86400), expires_at=timestamp(NOW - 1), created_by="user:ann",
        quota=admin_pb2.Quota(requests_per_minute=60),
    )  # fmt: skip
    (row,) = key_rows([key], NOW)
    assert len(row.cells) == len(KEY_HEADERS) - 1  # the last column is the action
    assert row.cells[:3] == ("k0123", "ci bot", "inference, models:read")
    assert row.cells[3].endswith("(expired)")
    assert row.cells[4] == "60 requests, unlimited tokens per minute"
    assert row.action is not None and row.action.path == "/console/admin/api-keys/revoke"
    assert dict(row.action.fields) == {"key_id": "k0123", "tenant": "acme"}
    assert "k0123" in row.action.confirm


def test_a_key_that_never_expires_and_has_no_own_limits_says_so() -> None:
    (row,) = key_rows([admin_pb2.ApiKey(key_id="k1", name="n", scopes=[INFERENCE])], NOW)
    assert row.cells[3] == "never"
    assert row.cells[4] == "tenant's only"


def test_clients_and_users_rows_carry_delete_but_not_for_oneself() -> None:
    client = admin_pb2.Client(client_id="c-1", tenant="acme", name="etl", scopes=[])
    (row,) = client_rows([client])
    assert row.cells == ("c-1", "etl", "-", "unlimited", "unlimited")
    assert row.action is not None and dict(row.action.fields)["client_id"] == "c-1"
    users = [admin_pb2.User(username=u, tenant="acme", scopes=[ADMIN]) for u in ("ann", "bob")]
    rows = user_rows(users, me="ann")
    assert [r.cells for r in rows] == [("ann", "admin"), ("bob", "admin")]
    assert rows[0].action is None
    assert rows[1].action is not None and dict(rows[1].action.fields)["username"] == "bob"
    assert len(USER_HEADERS) == 3


def test_a_block_row_names_what_is_blocked_and_unblocks_that_target() -> None:
    address = admin_pb2.BlockEntry(reason="40 failed sign-ins", signal="login", blocked_by="ids")
    address.target.address = "203.0.113.7"
    principal = admin_pb2.BlockEntry()
    principal.target.principal = "user:mallory"
    rows = block_rows([address, principal])
    assert rows[0].cells[0] == "address 203.0.113.7"
    assert rows[0].cells[2] == "40 failed sign-ins"
    assert rows[1].cells[0] == "user:mallory"
    assert [dict(r.action.fields)["target"] for r in rows if r.action] == [
        "203.0.113.7",
        "user:mallory",
    ]
    assert len(rows[0].cells) == len(BLOCK_HEADERS) - 1


# -- form fields -------------------------------------------------------------------------


def test_a_quota_left_empty_means_the_gateway_defaults_and_one_empty_half_means_zero() -> None:
    assert quota_of({"rpm": "", "tpm": " "}, "rpm", "tpm") is None
    assert quota_of({"rpm": "1,000"}, "rpm", "tpm") == admin_pb2.Quota(requests_per_minute=1000)


def test_a_quota_that_must_be_given_or_is_not_a_number_is_refused_on_its_field() -> None:
    with pytest.raises(InvalidArgument) as empty:
        quota_of({}, "rpm", "tpm", required=True)
    assert empty.value.field == "rpm"
    with pytest.raises(InvalidArgument) as words:
        quota_of({"rpm": "5", "tpm": "lots"}, "rpm", "tpm")
    assert words.value.field == "tpm"


def test_a_block_target_is_a_principal_only_with_its_prefix() -> None:
    assert block_target(" user:ann ").principal == "user:ann"
    assert block_target("client:c-1").principal == "client:c-1"
    assert block_target("2001:db8::1").address == "2001:db8::1"
    assert block_target("203.0.113.7").address == "203.0.113.7"


def test_only_scopes_one_holds_are_offered_and_api_keys_never_get_admin() -> None:
    held = frozenset({INFERENCE, ADMIN})
    assert [s for s, _ in scope_choices(held)] == [INFERENCE, ADMIN]
    assert [s for s, _ in scope_choices(held, for_api_key=True)] == [INFERENCE]
    assert dict(scope_choices(SCOPES))[INFERENCE] == SCOPES[INFERENCE]


def test_limits_and_paths_read_as_a_person_expects() -> None:
    assert limit(0) == "unlimited"
    assert limit(60) == "60"
    assert section_path() == "/console/admin"
    assert section_path("api-keys", "a b&c") == "/console/admin/api-keys?tenant=a+b%26c"


# -- refusals ----------------------------------------------------------------------------


def test_an_invalid_field_is_shown_beside_that_field_with_400() -> None:
    exc = InvalidArgument("quota.requests_per_minute", "must be >= 0")
    assert refusal(exc, ("name", "requests_per_minute")) == (
        400,
        {"requests_per_minute": "must be >= 0"},
    )
    alias = refusal(exc, ("rpm",), {"requests_per_minute": "rpm"})
    assert alias == (400, {"rpm": "must be >= 0"})
    address = InvalidArgument("target.address", "'x' is not an IPv4 or IPv6 address")
    assert refusal(address, ("target",), {"address": "target"})[1] == {
        "target": "'x' is not an IPv4 or IPv6 address"
    }


def test_a_taken_name_a_missing_tenant_and_a_refusal_have_their_own_statuses() -> None:
    taken = refusal(AlreadyExists("tenant 'a' exists already"), ("name",), exists="name")
    assert taken == (409, {"name": "tenant 'a' exists already"})
    missing = refusal(NotFound("tenant 'z' does not exist"), ("tenant",), missing="tenant")
    assert missing == (404, {"tenant": "tenant 'z' does not exist"})
    denied = refusal(PermissionDenied("only admins of tenant 'system'"), ("name",))
    assert denied == (403, {"": "only admins of tenant 'system'"})


# -- shown once --------------------------------------------------------------------------


def test_a_secret_flashed_is_taken_once_and_other_pages_flash_is_left_alone() -> None:
    store = {"models.notice": "theirs"}
    flash(store, "API key created.", {"new-api-key": "llmos-secret"})
    shown = take_flash(store)
    assert shown.notice == "API key created."
    assert [(s.element_id, s.value) for s in shown.secrets] == [("new-api-key", "llmos-secret")]
    assert store == {"models.notice": "theirs"}
    assert take_flash(store).secrets == []


def test_a_secret_without_a_label_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        flash({}, "x", {"somewhere": "s"})


def test_tabs_show_the_blocklist_only_to_system_admins() -> None:
    assert [t.label for t in tabs("users", False)] == ["Tenants", "API keys", "Clients", "Users"]
    current = [t.path for t in tabs("blocks", True) if t.current]
    assert current == ["/console/admin/blocks"]


# -- templates ---------------------------------------------------------------------------


def test_the_api_key_page_has_the_controls_a_browser_test_uses_and_shows_the_key_once() -> None:
    store: dict[str, str] = {}
    flash(store, "API key ci created.", {"new-api-key": "sk-<secret>"})
    page = render_text(
        "admin_api_keys.html",
        **_frame(
            shown=take_flash(store), names=["acme", "system"], listed="acme",
            headers=KEY_HEADERS, rows=key_rows([], NOW),
            scopes=scope_choices(SCOPES, for_api_key=True), expiries=EXPIRY_CHOICES,
            values={"tenant": "acme"}, checked=[], errors={},
        ),
    )  # fmt: skip
    assert '<form id="create-api-key"' in page
    assert re.search(r'<p class="secret" id="new-api-key"[^>]*>sk-&lt;secret&gt;</p>', page)
    for scope in SCOPES:
        assert (f'name="scopes" value="{scope}"' in page) == (scope != ADMIN)
    assert 'name="name"' in page and 'name="tenant" type="text" value="acme"' in page
    assert page.count('name="csrf_token" value="CSRF-T"') >= 2  # sign-out and create


def test_a_refused_user_form_keeps_what_was_typed_but_never_the_password() -> None:
    page = render_text(
        "admin_users.html",
        **_frame(
            names=["acme"], listed="acme", headers=USER_HEADERS, rows=[],
            scopes=scope_choices(SCOPES), checked=[INFERENCE],
            values={"username": "zoe", "tenant": "acme"},
            errors={"password": "must be 12 to 256 characters long"},
        ),
    )  # fmt: skip
    assert 'value="zoe"' in page
    assert re.search(r'name="password" type="password" value=""', page)
    assert 'aria-invalid="true" aria-describedby="f-password-error"' in page
    assert re.search(r'value="inference" checked', page)
    assert "new-totp-secret" not in page


def test_the_tenants_page_has_the_create_form_and_blocks_page_its_unblock_buttons() -> None:
    forms: dict[str, dict[str, dict[str, str]]] = {
        name: {"values": {}, "errors": {}} for name in ("create", "quota", "grant")
    }
    tenants = render_text(
        "admin.html",
        **_frame(headers=TENANT_HEADERS, rows=[], names=["system"], forms=forms),
    )
    assert '<form id="create-tenant"' in tenants
    assert 'id="create-name" name="name"' in tenants
    entry = admin_pb2.BlockEntry(reason="r")
    entry.target.address = "203.0.113.7"
    blocks = render_text(
        "admin_blocks.html",
        **_frame(
            tabs=tabs("blocks", True), headers=BLOCK_HEADERS, rows=block_rows([entry]),
            durations=BLOCK_CHOICES, values={}, errors={},
        ),
    )  # fmt: skip
    assert 'data-confirm="Lift the block of address 203.0.113.7?"' in blocks
    assert 'name="target" value="203.0.113.7"' in blocks


def test_the_clients_page_shows_its_secret_once_and_a_limits_form_per_listed_client() -> None:
    store: dict[str, str] = {}
    flash(store, "Client etl created.", {"new-client-secret": "cs-1"})
    client = admin_pb2.Client(client_id="c-1", tenant="acme", name="etl", scopes=[INFERENCE])
    page = render_text(
        "admin_clients.html",
        **_frame(
            shown=take_flash(store), names=["acme"], listed="acme", headers=CLIENT_HEADERS,
            rows=client_rows([client]), client_choices=[("c-1", "etl (c-1)")],
            scopes=scope_choices(SCOPES),
            create={"values": {"tenant": "acme"}, "checked": [], "errors": {"": "refused"}},
            quota={"values": {}, "errors": {}},
        ),
    )  # fmt: skip
    assert re.search(r'class="secret" id="new-client-secret"[^>]*>cs-1<', page)
    assert '<option value="c-1">etl (c-1)</option>' in page
    assert 'data-confirm="Delete client &#39;etl&#39; (c-1)? Its secret stops working."' in page
    assert '<p class="error" role="alert">refused</p>' in page


def test_a_new_users_otpauth_uri_is_also_a_qr_code_image() -> None:
    uri = "otpauth://totp/LLM%20OS:zoe?secret=JBSWY3DPEHPK3PXP&issuer=LLM%20OS"
    store: dict[str, str] = {}
    flash(store, "User zoe created.", {"new-totp-secret": "JBSWY3DPEHPK3PXP", "new-totp-uri": uri})
    page = render_text(
        "admin_users.html",
        **_frame(
            names=["acme"], listed="acme", headers=USER_HEADERS, rows=[],
            scopes=scope_choices(SCOPES), checked=[], values={}, errors={},
            shown=take_flash(store),
        ),
    )  # fmt: skip
    found = re.search(r'<img id="new-totp-qr" class="qr" src="([^"]+)"', page)
    assert found is not None
    source = html.unescape(found[1])
    assert source.startswith("data:image/svg+xml")  # an image the page's policy allows
    svg = urllib.parse.unquote(source.split(",", 1)[1])
    assert svg.startswith("<svg") and "<path" in svg
    assert "JBSWY3DPEHPK3PXP" not in svg  # the secret is in the pattern, not in text
