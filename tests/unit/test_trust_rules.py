"""The rules of zero trust inside, as pure logic: the caller table, tenant assertions,
NATS permissions per user, and the audit source taken from the subject."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from llmos import subjects
from llmos.assertions import AssertionVerifier
from llmos.callers import POLICY, apply_assertion, decide
from llmos.config import Secret
from llmos.errors import PermissionDenied, Unauthenticated
from llmos.identity import Peer, parse_spiffe
from llmos.natsperms import SERVICE_USERS, permissions, render_users
from llmos.trust import Credentials
from llmos.v1 import scheduler_pb2, storage_pb2
from services.audit.records import parse
from tools.standin import sign_assertion

BACKUP = "/llmos.v1.Storage/BackupStorage"


def _signed(tmp_path: Path, **changes: object) -> str:
    return sign_assertion(tmp_path, **{"request_id": "r-1", **changes})


def test_every_internal_rpc_of_every_proto_is_in_the_caller_table() -> None:
    from llmos.v1 import audit_pb2, scheduler_pb2, storage_pb2, trainer_pb2, worker_pb2

    methods = {
        f"/{service.full_name}/{method.name}"
        for module in (audit_pb2, scheduler_pb2, storage_pb2, trainer_pb2, worker_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }
    assert methods == set(POLICY)


def test_an_assertion_round_trips_and_names_its_tenant(tmp_path: Path) -> None:
    verified = AssertionVerifier(tmp_path, "storage").verify(_signed(tmp_path))
    assert (verified.tenant, verified.principal, verified.request_id) == ("acme", "alice", "r-1")


@pytest.mark.parametrize(
    ("changes", "refusal", "sentence"),
    [
        ({"audience": "audit"}, PermissionDenied, "meant for 'audit', not 'storage'"),
        ({"expires_at": time.time() - 60}, PermissionDenied, "has expired"),
    ],
)
def test_a_misdirected_or_old_assertion_is_refused(
    tmp_path: Path, changes: dict[str, object], refusal: type[Exception], sentence: str
) -> None:
    with pytest.raises(refusal, match=sentence):
        AssertionVerifier(tmp_path, "storage").verify(_signed(tmp_path, **changes))


def test_garbage_is_not_an_assertion(tmp_path: Path) -> None:
    _signed(tmp_path)  # the key exists
    for junk in ("", "abc", "abc.def", "..."):
        with pytest.raises(Unauthenticated):
            AssertionVerifier(tmp_path, "storage").verify(junk)


def test_the_caller_table_refuses_who_it_does_not_name(tmp_path: Path) -> None:
    verifier = AssertionVerifier(tmp_path, "storage")
    with pytest.raises(PermissionDenied, match="inference-worker may not call BackupStorage"):
        decide(BACKUP, Peer("inference-worker", "w"), None, verifier)
    with pytest.raises(Unauthenticated, match="client certificate"):
        decide(BACKUP, None, None, verifier)
    assert decide("/grpc.health.v1.Health/Check", None, None, verifier) is None


def test_a_system_only_rpc_needs_an_assertion_for_a_system_admin(tmp_path: Path) -> None:
    verifier = AssertionVerifier(tmp_path, "storage")
    gateway = Peer("gateway", "g")
    tenant_admin = _signed(tmp_path, scopes=frozenset({"admin"}))
    with pytest.raises(PermissionDenied, match="admins of the system tenant"):
        decide(BACKUP, gateway, tenant_admin, verifier)
    system_admin = _signed(
        tmp_path, tenant="", principal_tenant="system", scopes=frozenset({"admin"})
    )
    caller = decide(BACKUP, gateway, system_admin, verifier)
    assert caller is not None and caller.peer == gateway


def test_a_service_in_its_own_name_needs_no_assertion_but_the_gateway_does(
    tmp_path: Path,
) -> None:
    verifier = AssertionVerifier(tmp_path, "storage")
    method = "/llmos.v1.Storage/GetModelVersion"
    worker = decide(method, Peer("inference-worker", "w"), None, verifier)
    assert worker is not None and worker.assertion is None
    with pytest.raises(Unauthenticated, match="signed tenant assertion"):
        decide(method, Peer("gateway", "g"), None, verifier)


def test_the_asserted_tenant_and_owner_replace_what_the_request_said(tmp_path: Path) -> None:
    assertion = AssertionVerifier(tmp_path, "storage").verify(_signed(tmp_path))
    listing = storage_pb2.ListDatasetsRequest(tenant="system")
    apply_assertion(listing, assertion)
    assert listing.tenant == "acme"
    job = scheduler_pb2.SubmitJobRequest(tenant="system", owner="root")
    apply_assertion(job, assertion)
    assert (job.tenant, job.owner) == ("acme", "alice")


def test_spiffe_ids_name_service_and_instance() -> None:
    assert parse_spiffe("spiffe://llmos/storage/storage-1") == Peer("storage", "storage-1")
    for other in ("spiffe://evil/storage/x", "spiffe://llmos/storage", "https://llmos/a/b"):
        assert parse_spiffe(other) is None


def test_a_slot_user_may_heartbeat_and_take_work_only_as_its_own_instances() -> None:
    rules = permissions("inference-worker-3")
    assert f"{subjects.HEARTBEAT_PREFIX}.inference-worker.inference-worker-3.*" in rules.publish
    assert f"{subjects.WORK_PREFIX}.generate.inference-worker-3.*" in rules.subscribe
    own = subjects.heartbeat("inference-worker", "inference-worker-3-0a1b2c3d4e5f")
    assert (
        own == "llmos.heartbeat.inference-worker.inference-worker-3.inference-worker-3-0a1b2c3d4e5f"
    )
    assert not any(s.endswith(">") and "heartbeat" in s for s in rules.publish)


def test_no_service_user_may_touch_stream_administration() -> None:
    for user in SERVICE_USERS:
        rules = permissions(user)
        for subject in (*rules.publish, *rules.subscribe):
            assert not subject.startswith(("$JS.API.STREAM.CREATE", "$JS.API.STREAM.PURGE"))
            assert not subject.startswith(("$JS.API.STREAM.DELETE", "$JS.API.STREAM.UPDATE"))
        # no one reads another's replies (the gateway's inboxes take streamed answers)
        assert not any(s.startswith("_INBOX") for s in rules.subscribe), user


def test_the_rendered_configuration_gives_setup_everything_and_others_their_rules() -> None:
    users = {
        "setup": Credentials("setup", Secret("s")),
        "storage": Credentials("storage", Secret("t")),
    }
    text = render_users(users)
    assert '"user": "setup"' in text and text.count('"permissions"') == 1
    assert '"_INBOX_storage.>"' in text


def test_the_audit_source_is_the_subject_not_what_the_record_claims() -> None:
    from llmos.v1 import audit_pb2

    claimed = audit_pb2.AuditRecord(id="x", source="gateway", action="admin.grant")
    record = parse(claimed.SerializeToString(), "inference-worker", lambda: 1)
    assert record.source == "inference-worker"


def test_a_service_in_its_own_name_acts_only_on_the_tenants_its_rule_gives_it(
    tmp_path: Path,
) -> None:
    """A worker publishes the bundled model, which is the system tenant's, and nothing
    else; the scheduler may delete replaced checkpoints of any tenant."""
    verifier = AssertionVerifier(tmp_path, "storage")
    worker = decide("/llmos.v1.Storage/SetAlias", Peer("inference-worker", "w"), None, verifier)
    assert worker is not None
    worker.admit(storage_pb2.SetAliasRequest(tenant="system", model="m"))
    with pytest.raises(PermissionDenied, match="inference-worker may act only on tenant"):
        worker.admit(storage_pb2.SetAliasRequest(tenant="acme", model="m"))
    upload = storage_pb2.UploadBlobRequest(start=storage_pb2.UploadStart(tenant="acme"))
    uploading = decide(
        "/llmos.v1.Storage/UploadBlob", Peer("inference-worker", "w"), None, verifier
    )
    assert uploading is not None
    with pytest.raises(PermissionDenied):
        uploading.admit(upload)
    scheduler = decide("/llmos.v1.Storage/DeleteBlob", Peer("scheduler", "s"), None, verifier)
    assert scheduler is not None
    scheduler.admit(storage_pb2.DownloadBlobRequest(tenant="acme", sha256="0" * 64))
    with pytest.raises(PermissionDenied, match="trainer may not call DeleteBlob"):
        decide("/llmos.v1.Storage/DeleteBlob", Peer("trainer", "t"), None, verifier)


def test_the_asserted_tenant_replaces_the_one_an_upload_names_in_its_start(
    tmp_path: Path,
) -> None:
    assertion = AssertionVerifier(tmp_path, "storage").verify(_signed(tmp_path))
    upload = storage_pb2.UploadBlobRequest(start=storage_pb2.UploadStart(tenant="system"))
    apply_assertion(upload, assertion)
    assert upload.start.tenant == "acme"
    data = storage_pb2.UploadBlobRequest(data=b"x")
    apply_assertion(data, assertion)  # a data message names no tenant
    assert not data.HasField("start")


def test_a_service_without_its_assertion_key_refuses_and_says_why(tmp_path: Path) -> None:
    token = _signed(tmp_path / "gateway-side")
    with pytest.raises(Unauthenticated, match="has no assertion key"):
        AssertionVerifier(tmp_path / "service-side", "storage").verify(token)
