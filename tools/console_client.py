"""A scripted browser for the console (tests and checks, not a product): signs a person
in through the real authorization code + PKCE flow (the sign-in page's form, its CSRF
cookie, the redirect back) and keeps the session cookie, with the standard library only.

    python -m tools.console_client URL USER PASSWORD TOTP_SECRET [PATH]

prints the page at PATH (default /console/) as that person sees it."""

from __future__ import annotations

import html.parser
import http.cookiejar
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pyotp


class _Inputs(html.parser.HTMLParser):
    """The name and value of every <input> of a page (its forms' fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("name"):
            self.fields[str(found["name"])] = found.get("value") or ""


def inputs_of(page: str) -> dict[str, str]:
    """The fields of the forms on `page` (the last one wins if two share a name)."""
    parser = _Inputs()
    parser.feed(page)
    return parser.fields


@dataclass
class Answer:
    status: int
    url: str
    text: str
    headers: Message


class _Stay(urllib.request.HTTPRedirectHandler):
    """Do not follow redirects: the answer is the redirect itself."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class ConsoleBrowser:
    """Cookies, TLS trust and redirects of one browser."""

    def __init__(self, base: str, ca_file: Path | None = None) -> None:
        self.base = base.rstrip("/")
        self.cookies = http.cookiejar.CookieJar()
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        handlers = (
            urllib.request.HTTPSHandler(context=context),
            urllib.request.HTTPCookieProcessor(self.cookies),
        )
        # a POST's redirect is followed as a GET, as browsers do
        self._opener = urllib.request.build_opener(*handlers)
        self._staying = urllib.request.build_opener(*handlers, _Stay())

    def request(
        self, path: str, form: Mapping[str, str | list[str]] | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None, body: bytes | None = None, follow: bool = True,
    ) -> Answer:  # fmt: skip
        """GET `path` (or POST `form`, a list value sent as repeated fields, or send
        `body`), following redirects unless told
        not to (then a redirect is the answer, its target in `headers["Location"]`)."""
        data = urllib.parse.urlencode(form, doseq=True).encode() if form is not None else body
        url = path if path.startswith("http") else self.base + path
        request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
        opener = self._opener if follow else self._staying
        try:
            with opener.open(request, timeout=60) as response:
                text = response.read().decode()
                return Answer(response.status, response.url, text, response.headers)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            return Answer(exc.code, exc.url, text, exc.headers)

    def sign_in(self, username: str, password: str, totp_secret: str) -> Answer:
        """The whole flow: the console sends us to the sign-in page, we fill it in."""
        page = self.request("/console/")
        if "/authorize" not in page.url:
            raise RuntimeError(f"expected the sign-in page, got {page.status} {page.url}")
        fields = inputs_of(page.text)
        fields.update(username=username, password=password, totp=pyotp.TOTP(totp_secret).now())
        return self.request("/authorize", fields)

    def csrf(self, page: str) -> str:
        """The CSRF token a console page carries."""
        return inputs_of(page)["csrf_token"]


def main(argv: list[str]) -> None:
    base, user, password, secret = argv[:4]
    browser = ConsoleBrowser(base)
    answer = browser.sign_in(user, password, secret)
    if len(argv) > 4:
        answer = browser.request(argv[4])
    print(answer.status, answer.url)
    print(answer.text)


if __name__ == "__main__":
    main(sys.argv[1:])
