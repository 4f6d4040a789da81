"""An HTTP request as the web framework saw it, in the shape authlib's server reads.

The authorization server is framework-neutral: the HTTP layer (`gateway.auth.http`)
hands it an `HttpCall`, and these adapters give authlib the form and headers of it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request


@dataclass(frozen=True)
class HttpCall:
    """An HTTP request as the web framework saw it."""

    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, str]
    #: the client's address (the TCP peer): failed sign-ins are counted per address
    remote: str


class FormPayload(OAuth2Payload):  # type: ignore[misc]
    """A form body as authlib's payload (each field sent once)."""

    def __init__(self, form: dict[str, str]) -> None:
        self._form = form

    @property
    def data(self) -> dict[str, str]:
        return self._form

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        values: defaultdict[str, list[str]] = defaultdict(list)
        for key, value in self._form.items():
            values[key].append(value)
        return values


class CallRequest(OAuth2Request):  # type: ignore[misc]
    """An `HttpCall` as authlib's request: the form, never query arguments."""

    def __init__(self, call: HttpCall) -> None:
        super().__init__(method=call.method, uri=call.url, headers=call.headers)
        self.payload = FormPayload(call.form)
        self._form = call.form
        self.remote = call.remote

    @property
    def args(self) -> dict[str, str]:
        return {}

    @property
    def form(self) -> dict[str, str]:
        return self._form
