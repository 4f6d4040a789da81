"""The models pages' pure parts: registry rows (own and shared models, what is served),
a version's metadata and lineage as linked facts, the deploy form as a request and its
refusals on the form, and the pages rendered from them (escaped; deploy only where
the person may and the model is their tenant's)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.console.pages.model_facts import (
    alias_map,
    deploy_failure,
    deploy_request,
    deployed_versions,
    lineage_facts,
    metadata_facts,
    model_rows,
    number_text,
    served_counts,
    served_rows,
    version_rows,
    version_served,
)
from gateway.deployments import served_name
from gateway.web.render import render_text
from llmos.errors import InvalidArgument, NotFound, ResourceExhausted
from llmos.v1 import gateway_pb2, storage_pb2


def _version(
    model: str,
    number: int,
    tenant: str = "lab",
    aliases: tuple[str, ...] = (),
    metadata: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
) -> storage_pb2.ModelVersion:
    version = storage_pb2.ModelVersion(
        tenant=tenant, model=model, version=number, aliases=list(aliases)
    )
    version.metadata.update(metadata or {})
    version.lineage.update(lineage or {})
    version.created_at.FromSeconds(1_790_000_000 + number)
    version.files["config.json"] = "a" * 64
    return version


def _served(workers: dict[str, int]) -> gateway_pb2.ListModelsResponse:
    return gateway_pb2.ListModelsResponse(
        models=[gateway_pb2.ModelInfo(name=name, workers=count) for name, count in workers.items()]
    )


def test_the_registry_lists_own_models_first_then_the_shared_tenants_with_their_owner() -> None:
    latest = [
        _version("smollm2", 1, tenant="system", aliases=("production",)),
        _version("zeta", 3, metadata={"architecture": "LlamaForCausalLM", "parameters": 1234567}),
        _version("alpha", 1),
    ]
    rows = model_rows("lab", latest, {})
    assert [(r.name, r.mine, r.owner) for r in rows] == [
        ("alpha", True, "your tenant"),
        ("zeta", True, "your tenant"),
        ("smollm2", False, "system (shared)"),
    ]
    zeta = rows[1]
    assert (zeta.latest, zeta.architecture, zeta.parameters) == (3, "LlamaForCausalLM", "1,234,567")
    assert rows[0].aliases == "-" and rows[2].aliases == "production"
    assert rows[0].architecture == "-" and rows[0].parameters == "-"


def test_a_model_is_served_under_its_plain_name_or_as_its_owners_deployment() -> None:
    deployed = served_name("lab", "zeta", 3)
    served = served_counts(_served({"smollm2": 1, deployed: 2}))
    assert served == {"smollm2": 1, deployed: 2}
    rows = model_rows("lab", [_version("zeta", 4), _version("smollm2", 1, "system")], served)
    assert [r.served for r in rows] == ["version 3 on 2 workers", "as smollm2 on 1 worker"]
    assert deployed_versions("lab", "zeta", served) == {3: 2}
    assert deployed_versions("lab", "zet", served) == {}  # a prefix of the name is another model
    assert version_served(_version("zeta", 2), served) == 0  # an older version is not
    assert version_served(_version("zeta", 3, tenant="other"), served) == 0  # nor another's


def test_the_served_now_table_says_which_model_is_the_default() -> None:
    reply = gateway_pb2.ListModelsResponse(
        models=[gateway_pb2.ModelInfo(name="smollm2", workers=2, default=True)]
    )
    assert served_rows(reply) == [("smollm2", "2", "yes")]


def test_versions_are_listed_newest_first_with_aliases_and_what_they_derive_from() -> None:
    versions = [
        _version("zeta", 1, aliases=("production",)),
        _version("zeta", 2, lineage={"parent": "base@4"}),
    ]
    served = {served_name("lab", "zeta", 1): 1}
    rows = version_rows(versions, served)
    assert [(r.number, r.aliases, r.derived_from, r.served) for r in rows] == [
        (2, "-", "base@4", "no"),
        (1, "production", "-", "on 1 worker"),
    ]
    assert alias_map(versions) == {"production": 1}


def test_lineage_links_the_parent_version_the_training_job_and_the_dataset() -> None:
    version = _version(
        "zeta",
        2,
        lineage={
            "parent": "base@4",
            "job": "job-123",
            "dataset": {"name": "chats", "sha256": "f" * 64},
            "config": {"steps": 100, "learning_rate": 0.001},
            "source_file": "x.gguf",
        },
    )
    facts = [(f.label, f.text, f.href) for f in lineage_facts(version, version.tenant)]
    assert facts == [
        ("Derived from", "base@4", "/console/models/base?version=4"),
        ("Training job", "job-123", "/console/training/job-123"),
        ("Dataset", "chats (sha256 ffffffffffff)", "/console/datasets/chats"),
        ("Training settings", "learning_rate=0.001, steps=100", ""),
        ("Source file", "x.gguf", ""),
    ]
    plain = lineage_facts(_version("zeta", 1, lineage={"parent": "base"}), "lab")
    assert [(f.text, f.href) for f in plain] == [("base", "/console/models/base")]
    assert lineage_facts(_version("zeta", 1), "lab") == []
    # another tenant's model (shared by the system tenant): named, never linked
    shared = lineage_facts(version, "someone-else")
    assert [f.href for f in shared] == ["", "", "", "", ""]


def test_metadata_reads_in_words_known_keys_first() -> None:
    version = _version(
        "zeta",
        1,
        metadata={"zz_custom": True, "parameters": 135000000, "architecture": "Llama"},
    )
    assert [(f.label, f.text) for f in metadata_facts(version)] == [
        ("Architecture", "Llama"),
        ("Parameters", "135,000,000"),
        ("Zz custom", "True"),
    ]
    assert number_text(0.5) == "0.5" and number_text(None) == "-" and number_text(3.0) == "3"


def test_the_deploy_form_becomes_a_request_and_a_bad_version_is_refused_on_its_field() -> None:
    request = deploy_request({"model": " zeta ", "version": "3"})
    assert (request.model, request.version) == ("zeta", 3)
    for bad in ("", "three", "-1", "1.5"):
        with pytest.raises(InvalidArgument) as caught:
            deploy_request({"model": "zeta", "version": bad})
        assert caught.value.field == "version"
    with pytest.raises(InvalidArgument) as caught:
        deploy_request({"model": " ", "version": "1"})
    assert caught.value.field == "model"


def test_a_refused_deploy_lands_next_to_the_field_the_api_names_or_above_the_form() -> None:
    assert deploy_failure(InvalidArgument("model", "too long")) == {"model": "too long"}
    assert deploy_failure(InvalidArgument("request.version", "bad")) == {"version": "bad"}
    assert deploy_failure(NotFound("model 'x' is not in the registry")) == {
        "": "model 'x' is not in the registry"
    }
    assert deploy_failure(ResourceExhausted("at its limit")) == {"": "at its limit"}


def _layout(**context: Any) -> dict[str, Any]:
    return {"nav": [], "current": "/console/models", "user": "ada", "tenant": "lab",
            "csrf": "t0ken", **context}  # fmt: skip


def test_the_models_page_offers_only_the_tenants_own_models_to_deploy() -> None:
    rows = model_rows("lab", [_version("mine", 1), _version("<shared>", 1, "system")], {})
    html = render_text(
        "models.html",
        **_layout(
            rows=rows,
            served_rows=[],
            may_deploy=True,
            values={"model": "", "version": ""},
            errors={"version": "must be a version number"},
            flash={},
        ),
    )
    assert '<option value="mine">' in html and 'option value="&lt;shared&gt;"' not in html
    assert "&lt;shared&gt;" in html and "<shared>" not in html  # escaped in the table
    assert 'id="e-version"' in html and 'aria-invalid="true"' in html
    assert 'name="csrf_token" value="t0ken"' in html
    readonly = render_text(
        "models.html",
        **_layout(rows=rows, served_rows=[], may_deploy=False, values={}, errors={}, flash={}),
    )
    assert "Deploy a version" not in readonly


def test_a_model_page_shows_lineage_links_and_no_deploy_form_for_a_shared_model() -> None:
    version = _version("zeta", 2, tenant="system", lineage={"job": "j1"})
    html = render_text(
        "model.html",
        **_layout(
            name="zeta",
            versions=version_rows([version], {}),
            aliases={},
            plain_served="no",
            version=version,
            created=1.0,
            served="no",
            mine=False,
            metadata=metadata_facts(version),
            lineage=lineage_facts(version, version.tenant),
            files=[("config.json", "a" * 64)],
            may_deploy=False,
            values={"model": "zeta", "version": "2"},
            errors={},
            flash={"ok": "done"},
        ),
    )
    assert '<a href="/console/training/j1">j1</a>' in html
    assert (
        "shared with every tenant" in html
        and '<form method="post" action="/console/models/zeta"' not in html
    )
    assert 'class="ok" role="status">done<' in html
