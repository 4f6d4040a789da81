"""Models: the tenant's registry (each model's versions, aliases and lineage), what is
served now, and a form to deploy a version.

Reading needs `models:read`; the deploy forms show only with `models:write` (the API
refuses a deploy without it anyway). A deploy answers once a worker has loaded the
version, which can take minutes; the page then redirects with the outcome. A refusal
is shown next to the field the API names, on the page the form was sent from."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from gateway.auth.scopes import MODELS_READ, MODELS_WRITE
from gateway.console.app import Console
from gateway.console.forms import FieldErrors
from gateway.console.pages.model_facts import (
    DEPLOY_FIELDS,
    PRODUCTION,
    alias_map,
    deploy_failure,
    deploy_request,
    lineage_facts,
    metadata_facts,
    model_rows,
    seconds,
    served_counts,
    served_rows,
    served_text,
    version_rows,
    version_served,
)
from gateway.console.view import View
from llmos.errors import InvalidArgument, LLMOSError, PermissionDenied, Unauthenticated
from llmos.v1 import gateway_pb2, storage_pb2


async def _served(view: View) -> gateway_pb2.ListModelsResponse:
    reply: gateway_pb2.ListModelsResponse = await view.call(
        "Gateway/ListModels", gateway_pb2.ListModelsRequest()
    )
    return reply


async def _index(
    view: View, values: Mapping[str, str], errors: FieldErrors, status: int = 200
) -> web.Response:
    listed = await view.call("Storage/ListModelVersions", storage_pb2.ListModelVersionsRequest())
    served = await _served(view)
    return view.render(
        "models.html",
        status=status,
        rows=model_rows(view.session.tokens.tenant, listed.versions, served_counts(served)),
        served_rows=served_rows(served),
        may_deploy=view.may(MODELS_WRITE),
        values=values,
        errors=errors,
        flash=view.session.take_flash("models"),
    )


def _selected(name: str, query: Mapping[str, str]) -> storage_pb2.GetModelVersionRequest:
    """The version the detail page describes: ?version=N, ?alias=A, else production
    (the caller falls back to the latest when the model has no production version)."""
    text = query.get("version", "").strip()
    if text:
        if not text.isdigit():
            raise InvalidArgument("version", "must be a version number (1, 2, ...)")
        return storage_pb2.GetModelVersionRequest(model=name, version=int(text))
    return storage_pb2.GetModelVersionRequest(model=name, alias=query.get("alias", PRODUCTION))


async def _detail(
    view: View, values: Mapping[str, str], errors: FieldErrors, status: int = 200
) -> web.Response:
    name = view.request.match_info["name"]
    listed = await view.call(
        "Storage/ListModelVersions", storage_pb2.ListModelVersionsRequest(model=name)
    )
    aliases = alias_map(listed.versions)
    query = view.request.query
    wanted = _selected(name, query)
    if not query.get("version") and not query.get("alias") and PRODUCTION not in aliases:
        wanted = storage_pb2.GetModelVersionRequest(model=name)  # the latest
    version = await view.call("Storage/GetModelVersion", wanted)
    served = served_counts(await _served(view))
    tenant = view.session.tokens.tenant
    return view.render(
        "model.html",
        status=status,
        name=name,
        versions=version_rows(listed.versions, served),
        aliases=aliases,
        plain_served=served_text(served.get(name, 0)),
        version=version,
        created=seconds(version.created_at),
        served=served_text(version_served(version, served)),
        mine=version.tenant == tenant,
        metadata=metadata_facts(version),
        lineage=lineage_facts(version, tenant),
        files=[(path, sha256) for path, sha256 in sorted(version.files.items())],
        may_deploy=view.may(MODELS_WRITE) and version.tenant == tenant,
        values={"model": name, "version": str(version.version), **values},
        errors=errors,
        flash=view.session.take_flash("models"),
    )


def register(console: Console) -> None:
    async def show(view: View) -> web.StreamResponse:
        return await _index(view, {"model": "", "version": ""}, {})

    async def show_model(view: View) -> web.StreamResponse:
        return await _detail(view, {}, {})

    async def deploy(view: View) -> web.StreamResponse:
        """From either page: the model's page on success, the same page on a refusal."""
        form = await view.form()
        values = {field: form.get(field, "").strip() for field in DEPLOY_FIELDS}
        on_detail = "name" in view.request.match_info
        if on_detail:
            values["model"] = view.request.match_info["name"]
        try:
            done = await view.call("Gateway/DeployModel", deploy_request(values))
        except (PermissionDenied, Unauthenticated):
            raise
        except LLMOSError as exc:
            again = _detail if on_detail else _index
            return await again(view, values, deploy_failure(exc), 400)
        view.session.flash["models.ok"] = (
            f"{done.model} version {done.version} is deployed: it is the production "
            f"version now, served as {done.served_as}."
        )
        raise web.HTTPFound(f"/console/models/{done.model}")

    console.page("GET", "/console/models", MODELS_READ, show)
    console.page("POST", "/console/models", MODELS_WRITE, deploy)
    console.page("GET", "/console/models/{name}", MODELS_READ, show_model)
    console.page("POST", "/console/models/{name}", MODELS_WRITE, deploy)
