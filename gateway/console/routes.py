"""The console, assembled: its sign-in, sessions and every page, on the gateway's HTTP
application. Only with the built-in issuer (people sign in on its page)."""

from __future__ import annotations

import ipaddress
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.auth.signin import SignInPage
from gateway.console.app import Console
from gateway.console.pages import (
    admin,
    assistant,
    audit,
    chat,
    cluster,
    datasets,
    models,
    training,
)
from gateway.console.signin import ConsoleOAuth
from gateway.console.view import Api

log = logging.getLogger("llmos.gateway.console")

if TYPE_CHECKING:
    from gateway.apps.http import ApplicationsHttp
    from gateway.openai.http import OpenAIHttp
    from gateway.runtime import GatewayRuntime


def console_routes(
    app: web.Application,
    runtime: GatewayRuntime,
    servicers: dict[str, Any],
    openai: OpenAIHttp,
    apps: ApplicationsHttp,
) -> Console | None:
    """Add the sign-in page and the console to `app`: over TLS, or on a loopback
    address only (passwords and session cookies never cross a network in clear)."""
    assert runtime.oauth is not None
    secure = runtime.http_url.startswith("https://")
    host = str(runtime.http_listener.getsockname()[0])
    if not secure and not ipaddress.ip_address(host).is_loopback:
        log.warning(
            "the web console and sign-in page are off: without TLS they are served only "
            "on a loopback address",
            extra={"address": host},
        )
        return None
    SignInPage(runtime.oauth, secure).add_routes(app)
    console = Console(ConsoleOAuth(runtime.oauth), Api(runtime.guard, servicers), secure)
    console.add_routes(app)
    chat.register(console, openai)
    assistant.register(console, apps)
    for page in (models, datasets, training, cluster, admin, audit):
        page.register(console)
    console.mount(app)
    return console
