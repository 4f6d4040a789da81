"""The customer-service assistant: ask one of the tenant's knowledge bases a question and
watch the answer stream in beside the passages it cites; keep the conversation going,
or hand it to a person.

The page's script posts to `/console/assistant/{kb}/ask`, which is the applications'
HTTP endpoint itself (`ApplicationsHttp.ask`) called with the session's token: the same
validation, guard, streaming and audit record as any HTTP client gets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.auth.scopes import DATASETS, INFERENCE
from gateway.console.app import Console
from gateway.console.view import View
from llmos.v1 import apps_pb2

if TYPE_CHECKING:
    from gateway.apps.http import ApplicationsHttp

#: shown instead of the list to a person who may ask but not list (scope `datasets`)
UNLISTED = (
    "Listing knowledge bases needs scope 'datasets', which your sign-in does not grant; "
    "type the name of the knowledge base to ask."
)


def knowledge_base_rows(bases: list[apps_pb2.KnowledgeBase]) -> list[dict[str, Any]]:
    """The page's table of knowledge bases, by name."""
    return [
        {
            "name": base.name,
            "description": base.description,
            "documents": f"{len(base.documents):,}",
            "chunks": f"{base.chunks:,}",
        }
        for base in sorted(bases, key=lambda b: b.name)
    ]


def register(console: Console, apps: ApplicationsHttp) -> None:
    async def show(view: View) -> web.StreamResponse:
        if not view.may(DATASETS):
            return view.render("assistant.html", bases=None, unlisted=UNLISTED)
        listed = await view.call(
            "Applications/ListKnowledgeBases", apps_pb2.ListKnowledgeBasesRequest()
        )
        rows = knowledge_base_rows(list(listed.knowledge_bases))
        return view.render("assistant.html", bases=rows, unlisted="")

    async def ask(view: View) -> web.StreamResponse:
        """The browser's JSON question, answered by the applications' HTTP endpoint as
        the signed-in person (their cookies stay behind)."""
        return await apps.ask(view.as_bearer())

    console.page("GET", "/console/assistant", INFERENCE, show)
    console.page("POST", "/console/assistant/{kb}/ask", INFERENCE, ask)
