"""Console sessions: who is signed in to the console in which browser, held in the
gateway's memory. The browser holds only an unguessable session id in an HttpOnly,
Secure, SameSite=Strict cookie; its tokens never reach the browser, so a script on the
page (there is none but our own) could not steal them. A gateway restart signs everyone
out; that is the price of keeping no tokens anywhere else.

Pure bookkeeping (no I/O, a clock passed in): `gateway.console.signin` does the OAuth
calls (code exchange, refresh, revocation)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.web.security import new_token

#: a session nobody used for this long is ended
IDLE_S = 8 * 3600.0
#: at most this many sessions at once (the oldest idle one goes first)
MAX_SESSIONS = 10_000
#: an authorization request not completed within this is forgotten
PENDING_TTL_S = 600.0
MAX_PENDING = 10_000


@dataclass
class Tokens:
    """A sign-in's tokens and what the access token says about its holder."""

    access_token: str
    refresh_token: str
    expires_at: float
    username: str
    tenant: str
    scopes: frozenset[str]


@dataclass
class ConsoleSession:
    """One signed-in browser."""

    session_id: str
    csrf: str
    tokens: Tokens
    last_seen: float
    #: the place the person wanted before signing in
    next_path: str = "/console/"
    #: fields a page remembers across a redirect (a new API key's secret, shown once)
    flash: dict[str, str] = field(default_factory=dict)
    #: what a page keeps between its refreshes (the cluster page's previous poll)
    memo: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PendingSignIn:
    """An authorization request sent, its code not yet back: the PKCE verifier, and
    where to go afterwards."""

    state: str
    verifier: str
    next_path: str
    created: float


class Sessions:
    """Sessions and pending sign-ins, both bounded and expiring."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sessions: OrderedDict[str, ConsoleSession] = OrderedDict()
        self._pending: OrderedDict[str, PendingSignIn] = OrderedDict()

    def begin(self, next_path: str) -> PendingSignIn:
        """A new authorization request's state and verifier."""
        pending = PendingSignIn(new_token(), new_token() + new_token(), next_path, self._clock())
        self._pending[pending.state] = pending
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
        return pending

    def complete(self, state: str) -> PendingSignIn | None:
        """The pending sign-in `state` names, removed (a state works once)."""
        pending = self._pending.pop(state, None)
        if pending is None or self._clock() - pending.created > PENDING_TTL_S:
            return None
        return pending

    def start(self, tokens: Tokens, next_path: str) -> ConsoleSession:
        """A session for a completed sign-in."""
        session = ConsoleSession(new_token(), new_token(), tokens, self._clock(), next_path)
        self._sessions[session.session_id] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def find(self, session_id: str) -> ConsoleSession | None:
        """The live session with this id, marked as used now; None if unknown or idle."""
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            return None
        now = self._clock()
        if now - session.last_seen > IDLE_S:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session

    def end(self, session_id: str) -> ConsoleSession | None:
        """Forget the session; returns it (its tokens are then revoked)."""
        return self._sessions.pop(session_id, None)
