"""The console, assembled: its sign-in, sessions and every page, on the gateway's HTTP
application. Only with the built-in issuer (people sign in on its page)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.auth.signin import SignInPage
from gateway.console.app import Console
from gateway.console.pages import admin, audit, chat, cluster, datasets, models, training
from gateway.console.signin import ConsoleOAuth
from gateway.console.view import Api

if TYPE_CHECKING:
    from gateway.openai.http import OpenAIHttp
    from gateway.runtime import GatewayRuntime


def console_routes(
    app: web.Application, runtime: GatewayRuntime, servicers: dict[str, Any], openai: OpenAIHttp
) -> Console:
    """Add the sign-in page and the console to `app`."""
    assert runtime.oauth is not None
    secure = runtime.http_url.startswith("https://")
    SignInPage(runtime.oauth, secure).add_routes(app)
    console = Console(ConsoleOAuth(runtime.oauth), Api(runtime.guard, servicers), secure)
    console.add_routes(app)
    chat.register(console, openai)
    for page in (models, datasets, training, cluster, admin, audit):
        page.register(console)
    console.mount(app)
    return console
