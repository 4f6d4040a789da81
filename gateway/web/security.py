"""The browser-side defences of the gateway's pages: a strict Content-Security-Policy
(scripts and styles only from this origin, no inline script, no framing), no caching of
pages that carry personal data, and CSRF tokens compared in constant time.

Forms are also protected by SameSite=Strict session cookies; the CSRF token is the
defence that does not depend on the browser honouring that attribute."""

from __future__ import annotations

import hmac
import secrets

from aiohttp import web

#: no inline script or style, nothing from elsewhere, never inside a frame
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)

PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # not "no-referrer": with it browsers send `Origin: null` on form posts, which the
    # forgery check then cannot tell from a sandboxed foreign page
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: the form field and the header (for scripts' requests) that carry the CSRF token
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


def new_token() -> str:
    """A fresh unguessable token (session ids, CSRF tokens, PKCE verifiers, states)."""
    return secrets.token_urlsafe(32)


def same_token(presented: str | None, expected: str) -> bool:
    """Whether `presented` is `expected`, compared in constant time."""
    return bool(presented) and hmac.compare_digest(str(presented).encode(), expected.encode())


def set_private_cookie(
    response: web.StreamResponse,
    name: str,
    value: str,
    secure: bool,
    same_site: str = "Strict",
    max_age: int | None = None,
) -> None:
    """A cookie no script reads (HttpOnly), sent only over TLS when there is TLS, for
    the whole origin; `same_site` Lax only where it must survive a cross-site redirect."""
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=secure, httponly=True, samesite=same_site
    )


def cookie_name(base: str, secure: bool) -> str:
    """`__Host-` cookies (RFC 6265bis) are only sent over HTTPS, to exactly this host,
    for every path: another subdomain or path cannot set or shadow them."""
    return f"__Host-{base}" if secure else base
