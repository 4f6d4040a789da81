"""The chat playground: pick a model, set a system prompt and parameters, and watch the
answer stream in with its usage and timings.

The page's script posts to `/console/chat/completions`, which is the OpenAI-compatible
endpoint itself (`OpenAIHttp.chat`) called with the session's token: the same
validation, guard, streaming and usage accounting as any OpenAI client gets."""

from __future__ import annotations

from aiohttp import web

from gateway.auth.scopes import INFERENCE, MODELS_READ
from gateway.console.app import Console
from gateway.console.view import View
from gateway.openai.http import OpenAIHttp
from llmos.v1 import gateway_pb2


def register(console: Console, openai: OpenAIHttp) -> None:
    async def show(view: View) -> web.StreamResponse:
        models: list[str] = []
        if view.may(INFERENCE) or view.may(MODELS_READ):
            listed = await view.call("Gateway/ListModels", gateway_pb2.ListModelsRequest())
            models = sorted({m.name for m in listed.models})
        return view.render("chat.html", models=models)

    async def complete(view: View) -> web.StreamResponse:
        """The browser's JSON request, answered by the OpenAI-compatible endpoint as the
        signed-in person (their cookies stay behind)."""
        return await openai.chat(view.as_bearer())

    console.page("GET", "/console/chat", INFERENCE, show)
    console.page("POST", "/console/chat/completions", INFERENCE, complete)
