"""The gateway in the whole stack, as `make run` starts it (TLS on): programs and people
authenticate, inference is authorized, cached per tenant, metered and audited."""

from __future__ import annotations

import json
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import nats
import pyotp
import pytest
from nats.aio.msg import Msg

from llmos.oauthclient import Issuer
from llmos.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    scheduler_pb2,
)
from tests.e2e.conftest import RunningStack
from tools.harness import eventually, eventually_async
from tools.standin import nats_login_as

pytestmark = pytest.mark.e2e


def _issuer(stack: RunningStack) -> Issuer:
    return Issuer(stack.fields["issuer"], stack.ca)


def _generate(
    stack: RunningStack, token: str, prompt: str, **params: object
) -> list[gateway_pb2.GenerateResponse]:
    with stack.channel(token) as channel:
        return list(
            gateway_pb2_grpc.GatewayStub(channel).Generate(
                gateway_pb2.GenerateRequest(
                    prompt=prompt,
                    params=inference_pb2.GenerationParams(**params),  # type: ignore[arg-type]
                ),
                timeout=120,
            )
        )


def test_ready_line_names_the_issuer_and_the_credentials(stack: RunningStack) -> None:
    issuer = stack.fields["issuer"]
    assert issuer.startswith("https://")
    assert _issuer(stack).metadata()["issuer"] == issuer
    credentials = json.loads(Path(stack.fields["credentials"]).read_text())
    assert {"client_id", "client_secret"} <= credentials.keys()
    printed = "".join(stack.output) + "".join(
        p.read_text(errors="replace") for p in (stack.data_dir / "logs").iterdir()
    )
    assert credentials["client_secret"] not in printed


def test_a_program_with_client_credentials_calls_generate(stack: RunningStack) -> None:
    token = stack.client_token("programs", ["inference"])
    responses = _generate(stack, token, "The capital of France is", max_tokens=6)
    assert responses[-1].done
    assert responses[-1].usage.completion_tokens == 6
    assert "".join(r.text for r in responses).strip()


def test_a_person_logs_in_with_password_and_totp_through_the_cli(stack: RunningStack) -> None:
    password = f"pw-{uuid.uuid4().hex}"
    created = stack.cli(
        "admin", "user-create", "dana", "--scope", "inference", "--scope", "models:read",
        stdin=password + "\n",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret = json.loads(created.stdout)["totp_secret"]
    session = stack.data_dir / "dana-session.json"
    code = pyotp.TOTP(secret).now()
    login = stack.cli(
        "login", "--username", "dana", stdin=f"{password}\n{code}\n", LLMOS_SESSION=str(session)
    )
    assert login.returncode == 0, login.stderr
    assert "signed in as dana (tenant system" in login.stdout
    assert oct(session.stat().st_mode & 0o777) == "0o600"
    whoami = stack.cli("whoami", LLMOS_SESSION=str(session))
    assert json.loads(whoami.stdout)["sub"] == "dana"
    answer = stack.cli(
        "generate", "Hello", "--max-tokens", "3", "--quiet", LLMOS_SESSION=str(session)
    )
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip()
    denied = stack.cli("status", LLMOS_SESSION=str(session))  # dana lacks cluster:read
    assert denied.returncode == 2
    assert "needs scope 'cluster:read'" in denied.stderr
    replay = stack.cli(
        "login", "--username", "dana", stdin=f"{password}\n{code}\n", LLMOS_SESSION=str(session)
    )
    # a replayed code is refused with no hint that the password was right
    assert replay.returncode == 2
    assert "sign-in refused: Wrong user name, password or one-time code." in replay.stderr
    logout = stack.cli("logout", LLMOS_SESSION=str(session))
    assert logout.returncode == 0 and not session.exists()


def test_greedy_answers_are_cached_per_tenant(stack: RunningStack) -> None:
    mine = stack.client_token("cache-a", ["inference"])
    theirs = stack.client_token("cache-b", ["inference"])
    prompt = f"List three colours ({uuid.uuid4().hex[:6]}):"
    first = _generate(stack, mine, prompt, max_tokens=8)
    again = _generate(stack, mine, prompt, max_tokens=8)
    other = _generate(stack, theirs, prompt, max_tokens=8)
    sampled = _generate(stack, mine, prompt, max_tokens=8, temperature=0.9, seed=7)
    sampled_again = _generate(stack, mine, prompt, max_tokens=8, temperature=0.9, seed=7)
    assert not any(r.cached for r in first)
    assert len(again) == 1 and again[0].cached and again[0].done
    assert again[0].text == "".join(r.text for r in first)
    assert list(again[0].token_ids) == [t for r in first for t in r.token_ids]
    assert again[0].usage == first[-1].usage
    assert not any(r.cached for r in other)  # never shared across tenants
    assert not any(r.cached for r in sampled + sampled_again)  # sampling is not cached
    with stack.channel(mine) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        request = gateway_pb2.EmbedRequest(inputs=[prompt])
        assert not stub.Embed(request, timeout=60).cached
        assert stub.Embed(request, timeout=60).cached


def test_token_quota_refuses_once_spent(stack: RunningStack) -> None:
    token = stack.client_token("small-quota", ["inference"], tokens_per_minute=20)
    _generate(stack, token, "Once upon a time", max_tokens=24)  # admitted: nothing used yet
    with pytest.raises(grpc.RpcError) as caught:
        _generate(stack, token, "And then", max_tokens=4)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "20 model tokens per minute" in (caught.value.details() or "")
    trailers = dict(caught.value.trailing_metadata() or ())
    assert 0 < float(trailers["retry-after"]) <= 60


@pytest.mark.parametrize(
    ("call", "request_"),
    [
        ("Embed", gateway_pb2.EmbedRequest(inputs=["The cat sat on the mat."])),
        (
            "Classify",
            gateway_pb2.ClassifyRequest(text="Stir the onions.", labels=["cooking", "sports"]),
        ),
    ],
)
def test_embeddings_and_classifications_are_charged_to_the_token_quota(
    stack: RunningStack, call: str, request_: Any
) -> None:
    token = stack.client_token(f"metered-{call.lower()}", ["inference"], tokens_per_minute=5)
    with stack.channel(token) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        reply = getattr(stub, call)(request_, timeout=60)  # admitted: nothing used yet
        assert reply.usage.prompt_tokens > 5  # both run a whole text through the model
        # the tenant's minute now holds those tokens: the next call waits for room
        with pytest.raises(grpc.RpcError) as caught:
            getattr(stub, call)(request_, timeout=60)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "5 model tokens per minute" in (caught.value.details() or "")


def test_a_stream_cancelled_before_its_end_is_charged_for_its_tokens(
    stack: RunningStack,
) -> None:
    token = stack.client_token("cancels-late", ["inference"], tokens_per_minute=40)
    with stack.channel(token) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        stream = stub.Generate(
            gateway_pb2.GenerateRequest(
                prompt="Count from one to one hundred.",
                params=inference_pb2.GenerationParams(max_tokens=64, ignore_eos=True),
            ),
            timeout=120,
        )
        received = 0
        for response in stream:
            received += len(response.token_ids)
            if received >= 48:  # near the end, before the final chunk's usage
                break
        stream.cancel()
        assert received >= 48

        def refused() -> bool:
            # an empty prompt is admitted (or not) and then refused: it costs no tokens
            try:
                stub.Generate(gateway_pb2.GenerateRequest(prompt=""), timeout=10).next()
            except grpc.RpcError as exc:
                return bool(exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED)
            return False

        eventually(
            refused, timeout=30, interval=0.5, what="the cancelled stream's tokens to be charged"
        )


def test_critical_priority_needs_a_grant_from_a_system_admin(stack: RunningStack) -> None:
    token = stack.client_token("wants-critical", ["inference", "training"])
    critical = common_pb2.PRIORITY_CRITICAL
    request = gateway_pb2.GenerateRequest(
        prompt="Hi", priority=critical, params=inference_pb2.GenerationParams(max_tokens=2)
    )
    with stack.channel(token) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(request, timeout=60))
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (caught.value.details() or "").startswith("priority:")
        with pytest.raises(grpc.RpcError) as caught:  # nor may its jobs preempt others'
            stub.SubmitJob(
                scheduler_pb2.SubmitJobRequest(
                    spec=scheduler_pb2.JobSpec(name="j", kind="training", priority=critical)
                ),
                timeout=30,
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (caught.value.details() or "").startswith("spec.priority:")
    granted = stack.cli("admin", "critical-grant", "wants-critical")
    assert granted.returncode == 0, granted.stderr
    assert json.loads(granted.stdout)["critical_priority"] is True
    with stack.channel(token) as channel:
        answer = list(gateway_pb2_grpc.GatewayStub(channel).Generate(request, timeout=60))
    assert answer[-1].done


def test_deadlines_are_honoured(stack: RunningStack) -> None:
    with stack.channel() as channel:
        call = gateway_pb2_grpc.GatewayStub(channel).Generate(
            gateway_pb2.GenerateRequest(
                prompt="Tell a long story.",
                params=inference_pb2.GenerationParams(
                    max_tokens=2000, ignore_eos=True, temperature=0.5
                ),
            ),
            timeout=1.5,
        )
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as caught:
            list(call)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 30  # not the minutes 2000 tokens would take


def test_cluster_status_shows_the_worker_and_its_model(stack: RunningStack) -> None:
    with stack.channel() as channel:
        status = gateway_pb2_grpc.GatewayStub(channel).GetClusterStatus(
            scheduler_pb2.GetClusterStatusRequest(), timeout=10
        )
    (worker,) = [w for w in status.workers if w.instance.service == "inference-worker"]
    assert "smollm2-135m-instruct" in worker.loaded_models
    assert worker.slots > 0 and 0 <= worker.free_slots <= worker.slots
    assert worker.capacity.cpu_millicores >= 1000
    assert worker.in_use.memory_bytes > 100 * 1024 * 1024  # the model is in memory


def test_the_cli_shows_the_cluster_live(stack: RunningStack) -> None:
    shown = stack.cli("cluster")
    assert shown.returncode == 0, shown.stderr
    worker_row = next(
        line for line in shown.stdout.splitlines() if line.startswith("inference-worker")
    )
    assert "smollm2-135m-instruct" in worker_row and "GiB" in worker_row
    assert "queued generations: " in shown.stdout
    as_json = json.loads(stack.cli("cluster", "--json").stdout)
    assert {w["instance"]["service"] for w in as_json["workers"]} >= {"inference-worker", "trainer"}


async def test_inference_calls_are_audited_with_model_and_tokens(stack: RunningStack) -> None:
    login = nats_login_as(stack.data_dir / "secrets", "setup")
    nc = await nats.connect(stack.fields["nats"], **login)
    records: list[audit_pb2.AuditRecord] = []

    async def on_record(msg: Msg) -> None:
        records.append(audit_pb2.AuditRecord.FromString(msg.data))

    await nc.subscribe("llmos.audit.gateway", cb=on_record)
    await nc.flush()
    request_id = f"e2e-{uuid.uuid4().hex[:10]}"
    with stack.channel() as channel:
        responses = list(
            gateway_pb2_grpc.GatewayStub(channel).Generate(
                gateway_pb2.GenerateRequest(
                    prompt=f"Audit me {request_id}",
                    params=inference_pb2.GenerationParams(max_tokens=3),
                ),
                metadata=[("x-request-id", request_id)],
                timeout=60,
            )
        )
    await eventually_async(
        lambda: any(r.request_id == request_id for r in records), 10, what="the audit record"
    )
    await nc.close()
    (record,) = [r for r in records if r.request_id == request_id]
    usage = responses[-1].usage
    assert record.action == "/llmos.v1.Gateway/Generate"
    assert record.outcome == "OK"
    assert record.resource == "model/smollm2-135m-instruct"
    assert record.tokens == usage.prompt_tokens + usage.completion_tokens
    assert record.tenant == "system"


def test_the_audit_log_answers_who_did_what_and_proves_it(stack: RunningStack) -> None:
    """`llmos audit query` and `llmos audit verify` against the running stack; a tenant
    sees its own records only; prompts are not stored under the default policy."""
    token = stack.client_token("audit-lab", ["inference", "audit:read"])
    prompt = f"Audit trail {uuid.uuid4().hex[:8]}"
    _generate(stack, token, prompt, max_tokens=2)
    with stack.channel(token) as channel, pytest.raises(grpc.RpcError) as denied:
        gateway_pb2_grpc.GatewayStub(channel).ListJobs(scheduler_pb2.ListJobsRequest())
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    wanted = {
        ("/llmos.v1.Gateway/Generate", "OK"),
        ("/llmos.v1.Gateway/ListJobs", "PERMISSION_DENIED"),
    }

    def recorded() -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]] | None:
        query = stack.cli("audit", "query", "--tenant", "audit-lab", "--limit", "0")
        assert query.returncode == 0, query.stderr
        lines = [json.loads(line) for line in query.stdout.splitlines()]
        return (query, lines) if wanted <= {(r["action"], r["outcome"]) for r in lines} else None

    query, lines = eventually(recorded, 30, what=f"audit records {wanted}", interval=0.5)
    assert {r["tenant"] for r in lines} == {"audit-lab"}
    assert all(r["hash"] and r["sequence"] > 0 for r in lines)
    assert prompt not in query.stdout  # content is off by default

    # the tenant's own principal: only its records, and no other tenant's on request
    with stack.channel(token) as channel:
        audit = audit_pb2_grpc.AuditStub(channel)
        own = audit.QueryAudit(audit_pb2.QueryAuditRequest(page_size=1000), timeout=10)
        assert own.records and {r.record.tenant for r in own.records} == {"audit-lab"}
        with pytest.raises(grpc.RpcError) as other:
            audit.QueryAudit(audit_pb2.QueryAuditRequest(tenant="system"), timeout=10)
        assert other.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as verify:
            audit.VerifyAudit(audit_pb2.VerifyAuditRequest(), timeout=10)
        assert verify.value.code() == grpc.StatusCode.PERMISSION_DENIED

    export = stack.data_dir / "audit-export.jsonl"
    exported = stack.cli(
        "audit", "query", "--tenant", "audit-lab", "--limit", "0", "--output", str(export)
    )
    assert exported.returncode == 0, exported.stderr
    assert len(export.read_text().splitlines()) >= len(lines)
    assert stat.S_IMODE(export.stat().st_mode) == 0o600  # audit records: yours only

    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("valid: ")
