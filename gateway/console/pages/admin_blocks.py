"""The door's blocklist: addresses and principals the gateway refuses until a time, set
by intrusion detection or by hand. Only admins of tenant `system` manage it (a block
shuts out every tenant behind an address); others see a sentence saying so, and the
page makes no call the API would refuse."""

from __future__ import annotations

from aiohttp import web

from gateway.auth.scopes import ADMIN
from gateway.console.app import Console
from gateway.console.forms import FieldErrors
from gateway.console.pages.admin_common import (
    FORM_REFUSALS,
    go,
    is_system_admin,
    posted,
    refusal,
    render,
)
from gateway.console.pages.admin_rows import (
    BLOCK_CHOICES,
    BLOCK_HEADERS,
    block_rows,
    block_target,
    flash,
    seconds_of,
)
from gateway.console.view import View
from llmos.v1 import admin_pb2

BLOCK_FIELDS = ("target", "duration", "reason")
#: the API names the target's address or principal; the form has one field for both
BLOCK_ALIASES = {"address": "target", "principal": "target", "duration_s": "duration"}


async def show_blocks(
    view: View,
    status: int = 200,
    values: dict[str, str] | None = None,
    errors: FieldErrors | None = None,
) -> web.Response:
    """The blocks in force, and the form that adds one."""
    rows = []
    if is_system_admin(view):
        reply = await view.call("Admin/ListBlocks", admin_pb2.ListBlocksRequest())
        rows = block_rows(reply.blocks)
    return render(
        view,
        "admin_blocks.html",
        "blocks",
        status=status,
        headers=BLOCK_HEADERS,
        rows=rows,
        durations=BLOCK_CHOICES,
        values=values or {},
        errors=errors or {},
    )


def register(console: Console) -> None:
    async def blocks(view: View) -> web.StreamResponse:
        return await show_blocks(view)

    async def block(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        target = block_target(form.get("target", ""))
        try:
            request = admin_pb2.BlockRequest(
                target=target,
                duration_s=seconds_of(form, "duration"),
                reason=form.get("reason", ""),
            )
            entry = await view.call("Admin/Block", request)
        except FORM_REFUSALS as exc:
            status, errors = refusal(exc, BLOCK_FIELDS, BLOCK_ALIASES)
            return await show_blocks(view, status, form, errors)
        kind = entry.target.WhichOneof("target") or "target"
        flash(view.session.flash, f"Blocked {kind} {getattr(entry.target, kind, '')}.")
        raise go("blocks")

    async def unblock(view: View) -> web.StreamResponse:
        form, _ = await posted(view)
        target = block_target(form.get("target", ""))
        reply = await view.call("Admin/Unblock", admin_pb2.UnblockRequest(target=target))
        what = form.get("target", "").strip()
        if reply.removed:
            flash(view.session.flash, f"The block of {what} is lifted.")
        else:
            flash(view.session.flash, f"{what} was not blocked (the block may have ended).")
        raise go("blocks")

    console.page("GET", "/console/admin/blocks", ADMIN, blocks)
    console.page("POST", "/console/admin/blocks", ADMIN, block)
    console.page("POST", "/console/admin/blocks/unblock", ADMIN, unblock)
