"""Signing in to the console, at the protocol level: the authorization code grant with
PKCE as an attacker would probe it (stolen codes, foreign redirects, forged forms), the
cookies and headers a browser gets, CSRF on the console's forms, and sign-out. The
browser tests (test_console.py) show the same flow as a person sees it."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.parse
from pathlib import Path

import pyotp

from llmos.v1 import audit_pb2, audit_pb2_grpc
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.people import EVERY_SCOPE, Person, new_person
from tools.console_client import ConsoleBrowser, inputs_of
from tools.harness import eventually

CONSOLE = "llmos-console"


def _browser(stack: RunningStack) -> ConsoleBrowser:
    return ConsoleBrowser(stack.fields["issuer"], Path(stack.fields["tls_ca"]))


def _authorize(stack: RunningStack, verifier: str, **override: str) -> str:
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "response_type": "code",
        "client_id": CONSOLE,
        "redirect_uri": f"{stack.fields['issuer']}/console/callback",
        "scope": "inference",
        "state": "s-1",
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
        **override,
    }
    return "/authorize?" + urllib.parse.urlencode({k: v for k, v in query.items() if v})


def _code(stack: RunningStack, browser: ConsoleBrowser, person: Person, verifier: str) -> str:
    """Sign in on the authorization server's page; the code it redirects with."""
    page = browser.request(_authorize(stack, verifier))
    assert page.status == 200, page.text
    fields = inputs_of(page.text)
    fields.update(
        username=person.username,
        password=person.password,
        totp=pyotp.TOTP(person.totp_secret).now(),
    )
    answer = browser.request("/authorize", fields, follow=False)
    assert answer.status == 302, answer.text
    location = urllib.parse.urlsplit(answer.headers["Location"])
    assert location.path == "/console/callback"
    params = urllib.parse.parse_qs(location.query)
    assert params["state"] == ["s-1"]
    return params["code"][0]


def _redeem(
    stack: RunningStack, browser: ConsoleBrowser, code: str, verifier: str
) -> tuple[int, dict[str, object]]:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": f"{stack.fields['issuer']}/console/callback",
        "client_id": CONSOLE,
        "code_verifier": verifier,
    }
    answer = browser.request("/token", form)
    return answer.status, json.loads(answer.text)


def test_a_code_is_redeemed_once_and_only_with_its_own_verifier(stack: RunningStack) -> None:
    person = new_person(stack, ["inference"])
    browser = _browser(stack)
    verifier = secrets.token_urlsafe(48)
    code = _code(stack, browser, person, verifier)
    status, body = _redeem(stack, browser, code, secrets.token_urlsafe(48))
    assert status == 400 and body["error"] == "invalid_grant", body
    # whoever tried a stolen code spent it: not even the right verifier redeems it now
    status, body = _redeem(stack, browser, code, verifier)
    assert status == 400 and body["error"] == "invalid_grant", body


def test_a_code_with_its_verifier_gives_the_persons_tokens_once(stack: RunningStack) -> None:
    person = new_person(stack, ["inference", "models:read"])
    browser = _browser(stack)
    verifier = secrets.token_urlsafe(48)
    code = _code(stack, browser, person, verifier)
    status, body = _redeem(stack, browser, code, verifier)
    assert status == 200, body
    assert body["scope"] == "inference" and body["refresh_token"]
    replay, _ = _redeem(stack, browser, code, verifier)
    assert replay == 400


def test_the_sign_in_page_is_refused_to_foreign_redirects_and_requests_without_pkce(
    stack: RunningStack,
) -> None:
    browser = _browser(stack)
    verifier = secrets.token_urlsafe(48)
    foreign = browser.request(_authorize(stack, verifier, redirect_uri="https://evil.example/cb"))
    assert foreign.status == 400
    assert "password" not in inputs_of(foreign.text)  # nobody is asked for a password
    plain = browser.request(
        _authorize(stack, verifier, code_challenge="", code_challenge_method="")
    )
    assert plain.status == 400 and "PKCE" in plain.text
    weak = browser.request(_authorize(stack, verifier, code_challenge_method="plain"))
    assert weak.status == 400


def test_a_sign_in_form_posted_from_elsewhere_is_refused(stack: RunningStack) -> None:
    person = new_person(stack, ["inference"])
    page = _browser(stack).request(_authorize(stack, secrets.token_urlsafe(48)))
    fields = inputs_of(page.text)  # the form's token, but not the cookie that goes with it
    fields.update(username=person.username, password=person.password,
                  totp=pyotp.TOTP(person.totp_secret).now())  # fmt: skip
    elsewhere = _browser(stack).request("/authorize", fields, follow=False)
    assert elsewhere.status == 403
    assert "Location" not in elsewhere.headers


def test_console_pages_are_private_to_the_session_and_framed_by_nobody(stack: RunningStack) -> None:
    person = new_person(stack, ["cluster:read"])
    browser = _browser(stack)
    page = browser.sign_in(person.username, person.password, person.totp_secret)
    assert page.status == 200 and page.url.endswith("/console/cluster")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert page.headers["Cache-Control"] == "no-store"
    session = next(c for c in browser.cookies if c.name.endswith("llmos_console"))
    assert session.name.startswith("__Host-") and session.secure
    assert session.has_nonstandard_attr("HttpOnly")
    assert session.get_nonstandard_attr("SameSite") == "Strict"


def test_forms_without_the_csrf_token_or_from_another_origin_are_refused(
    stack: RunningStack,
) -> None:
    person = new_person(stack, EVERY_SCOPE)
    browser = _browser(stack)
    page = browser.sign_in(person.username, person.password, person.totp_secret)
    token = browser.csrf(page.text)
    missing = browser.request("/console/logout", {})
    assert missing.status == 403 and "CSRF" in missing.text
    foreign = browser.request(
        "/console/logout", {"csrf_token": token}, headers={"Origin": "https://evil.example"}
    )
    assert foreign.status == 403
    still = browser.request("/console/cluster")
    assert still.status == 200 and still.url.endswith("/console/cluster")  # not signed out


def test_signing_out_ends_the_session_and_revokes_its_sign_in(stack: RunningStack) -> None:
    person = new_person(stack, ["cluster:read"])
    browser = _browser(stack)
    page = browser.sign_in(person.username, person.password, person.totp_secret)
    out = browser.request("/console/logout", {"csrf_token": browser.csrf(page.text)})
    assert out.status == 200 and "Signed out" in out.text
    again = browser.request("/console/cluster")
    assert "/authorize" in again.url  # back to the sign-in page

    def revoked() -> bool:
        with stack.channel() as channel:
            found = audit_pb2_grpc.AuditStub(channel).QueryAudit(
                audit_pb2.QueryAuditRequest(principal=person.username, action="oauth.*"),
                timeout=10,
            )
        actions = {(r.record.action, r.record.outcome) for r in found.records}
        return {("oauth.authorize", "OK"), ("oauth.token", "OK"), ("oauth.revoke", "OK")} <= actions

    eventually(revoked, 30, what="sign-in, code exchange and revocation audited")


def test_a_code_returned_to_another_browser_does_not_sign_it_in(stack: RunningStack) -> None:
    person = new_person(stack, ["cluster:read"])
    victim, attacker = _browser(stack), _browser(stack)
    started = victim.request("/console/", follow=False)  # the victim's sign-in starts
    assert started.status == 302
    login = victim.request(started.headers["Location"], follow=False)
    authorize = urllib.parse.urlsplit(login.headers["Location"])
    state = urllib.parse.parse_qs(authorize.query)["state"][0]
    # the attacker signs in as themselves, and sends the victim their code and state
    page = attacker.request("/console/", follow=True)
    fields = inputs_of(page.text)
    fields.update(username=person.username, password=person.password,
                  totp=pyotp.TOTP(person.totp_secret).now())  # fmt: skip
    answer = attacker.request("/authorize", fields, follow=False)
    stolen = urllib.parse.urlsplit(answer.headers["Location"]).query
    landed = victim.request(f"/console/callback?{stolen}", follow=False)
    assert landed.status == 400 and "not started in this browser" in landed.text
    assert not any(c.name.endswith("llmos_console") for c in victim.cookies)
    forged = victim.request(f"/console/callback?state={state}&error=x&error_description=Call+555")
    assert "555" not in forged.text  # only our own words on this origin's pages


def test_script_requests_without_the_csrf_header_are_refused(stack: RunningStack) -> None:
    person = new_person(stack, ["inference", "datasets"])
    browser = _browser(stack)
    browser.sign_in(person.username, person.password, person.totp_secret)
    chat = browser.request(
        "/console/chat/completions",
        body=b'{"model": "x", "messages": [{"role": "user", "content": "hi"}]}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    assert chat.status == 403 and "CSRF" in chat.text
    upload = browser.request(
        "/console/datasets/upload?name=sneaky",
        body=b"some text",
        headers={"Content-Type": "application/octet-stream"},
        method="PUT",
    )
    assert upload.status == 403
    listed = browser.request("/console/datasets")
    assert "sneaky" not in listed.text
