"""Rendering pages from the package's Jinja templates. Autoescaping is on for every
template, so all text from users, models and the API is escaped; nothing marks text safe."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
import segno
from aiohttp import web

from gateway.web.security import PAGE_HEADERS

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("gateway.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(seconds: float) -> str:
    """Seconds since the epoch as a UTC time a person reads ("-" when unset)."""
    if not seconds:
        return "-"
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _size(count: float) -> str:
    """Bytes in the largest unit that keeps the number at least 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _qr(text: str) -> str:
    """`text` as a QR code, an SVG `data:` URI for an <img> (the policy allows data:
    images; nothing is inlined into the page's markup)."""
    return str(segno.make(text, error="m").svg_data_uri(scale=4, border=2))


_ENVIRONMENT.filters["when"] = _when
_ENVIRONMENT.filters["qr"] = _qr
_ENVIRONMENT.filters["size"] = _size


def render_text(template: str, **context: Any) -> str:
    """The named template rendered with `context`."""
    return _ENVIRONMENT.get_template(template).render(**context)


def page(template: str, status: int = 200, **context: Any) -> web.Response:
    """An HTML response of the named template, with the pages' security headers."""
    return web.Response(
        text=render_text(template, **context),
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers=PAGE_HEADERS,
    )


def static_folder() -> str:
    """Where the CSS and JavaScript files are (served under /console/static/)."""
    return str(resources.files("gateway.web") / "static")
