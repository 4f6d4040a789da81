"""Console sessions: who is signed in to the console in which browser, held in the
gateway's memory. The browser holds only an unguessable session id in an HttpOnly,
Secure, SameSite=Strict cookie; its tokens never reach the browser, so a script on the
page (there is none but our own) could not steal them. A gateway restart signs everyone
out, and with several gateway replicas a load balancer must keep each browser on one
(sticky sessions): that is the price of keeping no tokens anywhere else.

Also the `state` of authorization requests, which needs no memory at all: it is signed
and carries where to return and when it was issued, and the PKCE verifier is derived
from it with this process's key, so no flood of sign-in starts can push out anyone's.

Pure bookkeeping (no I/O, a clock passed in): `gateway.console.signin` does the OAuth
calls (code exchange, refresh, revocation)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.web.security import new_token

#: a session nobody used for this long is ended (the pages' own refreshes do not count)
IDLE_S = 8 * 3600.0
#: and every session ends this long after sign-in, used or not
MAX_AGE_S = 12 * 3600.0
#: at most this many sessions at once (the least recently used goes first)
MAX_SESSIONS = 10_000
#: an authorization request not completed within this is refused
PENDING_TTL_S = 600.0


@dataclass
class Tokens:
    """A sign-in's tokens and what the access token says about its holder."""

    access_token: str
    refresh_token: str
    expires_at: float
    username: str
    tenant: str
    scopes: frozenset[str]
    #: how long the access token was issued for
    lifetime_s: float = 900.0


@dataclass
class ConsoleSession:
    """One signed-in browser."""

    session_id: str
    csrf: str
    tokens: Tokens
    last_seen: float
    started: float
    #: the one refresh of its tokens under way, which every request waits for
    renewing: asyncio.Task[None] | None = None
    #: notes a page shows once after a redirect (a new API key's secret), keyed
    #: "page.name": each page takes only its own
    flash: dict[str, str] = field(default_factory=dict)
    #: what a page keeps between its refreshes (the cluster page's previous poll)
    memo: dict[str, Any] = field(default_factory=dict)

    def take_flash(self, page: str) -> dict[str, str]:
        """The notes left for `page` (keys "page.name"), by name, removed: shown once,
        and only by the page they were left for."""
        prefix = page + "."
        taken = {k: v for k, v in self.flash.items() if k.startswith(prefix)}
        for key in taken:
            del self.flash[key]
        return {k.removeprefix(prefix): v for k, v in taken.items()}


@dataclass(frozen=True)
class PendingSignIn:
    """An authorization request sent, its code not yet back: the PKCE verifier, and
    where to go afterwards."""

    state: str
    verifier: str
    next_path: str


class SignInStates:
    """Signed authorization-request states, and the verifiers derived from them."""

    def __init__(self, key: bytes | None = None, clock: Callable[[], float] = time.time) -> None:
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def issue(self, next_path: str) -> PendingSignIn:
        """A new request's state (and verifier) that returns to `next_path`."""
        claims = {"n": next_path, "t": int(self._clock()), "r": new_token()}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        state = f"{body}.{self._sign(body)}"
        return PendingSignIn(state, self._verifier(state), next_path)

    def check(self, state: str) -> PendingSignIn | None:
        """The sign-in `state` stands for, if this process issued it, not too long ago."""
        body, _, signature = state.partition(".")
        if not body or not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            issued, next_path = float(claims["t"]), str(claims["n"])
        except (ValueError, KeyError, TypeError):
            return None
        if not 0 <= self._clock() - issued <= PENDING_TTL_S:
            return None
        return PendingSignIn(state, self._verifier(state), next_path)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, b"state:" + body.encode(), hashlib.sha256).digest())

    def _verifier(self, state: str) -> str:
        """43 URL-safe characters: RFC 7636's shortest verifier, 256 bits."""
        return _b64(hmac.new(self._key, b"verifier:" + state.encode(), hashlib.sha256).digest())


class Sessions:
    """Sessions, bounded and expiring."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()

    def start(self, tokens: Tokens) -> ConsoleSession:
        """A session for a completed sign-in."""
        now = self._clock()
        session = ConsoleSession(new_token(), new_token(), tokens, now, now)
        self._sessions[session.session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def find(self, session_id: str, touch: bool = True) -> ConsoleSession | None:
        """The live session with this id; None if unknown, idle or too old. `touch`:
        a person used it now (a page's own refresh does not)."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > IDLE_S or now - session.started > MAX_AGE_S:
            del self._sessions[session_id]
            return None
        if touch:
            session.last_seen = now
            self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> ConsoleSession | None:
        """Forget the session; returns it (its tokens are then revoked)."""
        return self._sessions.pop(session_id, None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
