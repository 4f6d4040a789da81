"""`llmos` — talk to a running LLM OS through its gateway.

The gateway address comes from --gateway, else $LLMOS_GATEWAY, else the stack file the
dev launcher writes (<data dir>/stack.json), else 127.0.0.1:50051. How the command
authenticates is described in `tools.cli.session`.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.auth.bootstrap import CLI_CLIENT_ID
from llmos.errors import InvalidArgument
from llmos.oauthclient import Issuer, OAuthError
from llmos.priority import PriorityClass
from llmos.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    inference_pb2,
    scheduler_pb2,
    storage_pb2_grpc,
)
from tools.cli.audit_commands import add_commands as add_audit_commands
from tools.cli.session import (
    NotSignedIn,
    Session,
    access_token,
    ca_file,
    session_from_token,
    session_path,
    stack_info,
)
from tools.cli.storage_commands import add_commands as add_storage_commands
from tools.cli.storage_commands import cmd_storage_admin
from tools.cli.train_command import add_command as add_train_command
from tools.devstack.access import tls_channel

DEFAULT_GATEWAY = "127.0.0.1:50051"
EXIT_OK, EXIT_NOT_READY, EXIT_REFUSED, EXIT_UNREACHABLE = 0, 1, 2, 3


def gateway_address(explicit: str | None) -> str:
    """Resolve which gateway to call (see module docstring)."""
    if explicit:
        return explicit
    if os.environ.get("LLMOS_GATEWAY"):
        return os.environ["LLMOS_GATEWAY"]
    stack_file = Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "stack.json"
    try:
        return str(json.loads(stack_file.read_text())["gateway"])
    except (OSError, ValueError, KeyError):
        return DEFAULT_GATEWAY


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """A channel to the gateway that sends the bearer token with every call (TLS when a CA
    is known, as call credentials require)."""
    address = gateway_address(args.gateway)
    ca = ca_file(args.ca_file)
    token = access_token(args.token, args.credentials, ca)
    if ca is None:
        return grpc.intercept_channel(grpc.insecure_channel(address), _Bearer(token))
    return tls_channel(address, ca, token)


class _Bearer(
    grpc.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.UnaryStreamClientInterceptor,  # type: ignore[misc]
    grpc.StreamUnaryClientInterceptor,  # type: ignore[misc]
):
    """Adds `authorization: Bearer` to each call on a plaintext (local) channel."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self._metadata]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def _stub(args: argparse.Namespace) -> gateway_pb2_grpc.GatewayStub:
    return gateway_pb2_grpc.GatewayStub(_channel(args))


def _admin(args: argparse.Namespace) -> admin_pb2_grpc.AdminStub:
    return admin_pb2_grpc.AdminStub(_channel(args))


def _storage(args: argparse.Namespace) -> storage_pb2_grpc.StorageStub:
    return storage_pb2_grpc.StorageStub(_channel(args))


def _print_json(message: Message) -> None:
    print(json_format.MessageToJson(message, preserving_proto_field_name=True))


def cmd_status(args: argparse.Namespace) -> int:
    """Print every service instance and whether it is SERVING."""
    status = _stub(args).GetSystemStatus(gateway_pb2.GetSystemStatusRequest(), timeout=args.timeout)
    if args.json:
        print(json_format.MessageToJson(status, preserving_proto_field_name=True))
        return EXIT_OK if status.ready else EXIT_NOT_READY
    state_name = gateway_pb2.ServiceStatus.State.Name
    rows = [
        (
            s.instance.service,
            state_name(s.state).removeprefix("STATE_"),
            s.instance.address,
            s.instance.instance_id,
            s.detail,
        )
        for s in status.services
    ]
    rows += [
        (name, "MISSING", "-", "-", "no instance registered") for name in status.missing_services
    ]
    header = ("SERVICE", "STATE", "ADDRESS", "INSTANCE", "DETAIL")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)
            ).rstrip()
        )
    print(f"\nLLM OS is {'ready' if status.ready else 'NOT ready'}")
    return EXIT_OK if status.ready else EXIT_NOT_READY


def cmd_events(args: argparse.Namespace) -> int:
    """Stream events as JSON lines until interrupted."""
    request = gateway_pb2.SubscribeEventsRequest(kinds=args.kind or [])
    for event in _stub(args).SubscribeEvents(request):
        print(
            json_format.MessageToJson(event, indent=None, preserving_proto_field_name=True),
            flush=True,
        )
    return EXIT_OK


def _params(args: argparse.Namespace) -> inference_pb2.GenerationParams:
    params = inference_pb2.GenerationParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        stop=args.stop or [],
    )
    if args.seed is not None:
        params.seed = args.seed
    return params


def _print_stream(responses: Iterable[gateway_pb2.GenerateResponse], quiet: bool) -> int:
    last = None
    for response in responses:
        print(response.text, end="", flush=True)
        last = response
    print()
    if last is not None and not quiet and last.cached:
        print(f"[{last.model}: {last.finish_reason}, answered from the cache]", file=sys.stderr)
    elif last is not None and not quiet:
        print(
            f"[{last.model}: {last.finish_reason}, {last.usage.prompt_tokens} prompt + "
            f"{last.usage.completion_tokens} completion tokens, first token after "
            f"{last.timings.time_to_first_token_s * 1000:.0f} ms, "
            f"{last.timings.mean_inter_token_s * 1000:.0f} ms/token]",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    """Stream a completion (or, with --chat, an assistant answer) to stdout."""
    stub = _stub(args)
    priority = PriorityClass.parse(args.priority, "--priority")
    if args.chat:
        messages = [inference_pb2.ChatMessage(role="user", content=args.prompt)]
        if args.system:
            messages.insert(0, inference_pb2.ChatMessage(role="system", content=args.system))
        chat = gateway_pb2.ChatRequest(model=args.model, messages=messages, params=_params(args))
        chat.priority = int(priority)  # type: ignore[assignment]
        return _print_stream(stub.Chat(chat, timeout=args.timeout), args.quiet)
    request = gateway_pb2.GenerateRequest(
        model=args.model, prompt=args.prompt, params=_params(args)
    )
    request.priority = int(priority)  # type: ignore[assignment]
    return _print_stream(stub.Generate(request, timeout=args.timeout), args.quiet)


def cmd_cluster(args: argparse.Namespace) -> int:
    """Workers with their capacity, live use, slots and models; queue depth; fair share."""
    status = _stub(args).GetClusterStatus(
        scheduler_pb2.GetClusterStatusRequest(), timeout=args.timeout
    )
    if args.json:
        _print_json(status)
        return EXIT_OK
    rows = [("SERVICE", "INSTANCE", "CPU USED/CORES", "MEMORY USED/TOTAL", "SLOTS FREE", "MODELS")]
    for worker in status.workers:
        cap, use = worker.capacity, worker.in_use
        rows.append(
            (
                worker.instance.service,
                worker.instance.instance_id,
                f"{use.cpu_millicores / 1000:.2f}/{cap.cpu_millicores / 1000:g}",
                f"{use.memory_bytes / 2**30:.2f}/{cap.memory_bytes / 2**30:.1f} GiB",
                f"{worker.free_slots}/{worker.slots}",
                ",".join(worker.loaded_models) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"\nqueued generations: {status.queued_requests}")
    for tenant, tokens in sorted(status.tokens_served_by_tenant.items()):
        print(f"tokens served to {tenant}: {tokens}")
    return EXIT_OK


def _job_line(job: scheduler_pb2.Job) -> str:
    state = common_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")
    return f"{job.job_id}  {state:<10} {job.spec.name}  ({job.reason})"


def cmd_jobs(args: argparse.Namespace) -> int:
    """List, show, cancel or watch the tenant's jobs."""
    stub, t = _stub(args), args.timeout
    if args.jobs_action == "list":
        for job in stub.ListJobs(scheduler_pb2.ListJobsRequest(), timeout=t).jobs:
            print(_job_line(job))
    elif args.jobs_action == "get":
        _print_json(stub.GetJob(scheduler_pb2.GetJobRequest(job_id=args.id), timeout=t))
    elif args.jobs_action == "cancel":
        job = stub.CancelJob(scheduler_pb2.CancelJobRequest(job_id=args.id), timeout=t)
        print(_job_line(job))
    else:  # watch
        for job in stub.WatchJob(scheduler_pb2.GetJobRequest(job_id=args.id)):
            print(_job_line(job), flush=True)
    return EXIT_OK


def cmd_embed(args: argparse.Namespace) -> int:
    """Print one JSON array of floats per input text."""
    reply = _stub(args).Embed(
        gateway_pb2.EmbedRequest(model=args.model, inputs=args.texts), timeout=args.timeout
    )
    for embedding in reply.embeddings:
        print(json.dumps([round(v, 6) for v in embedding.values]))
    return EXIT_OK


def cmd_classify(args: argparse.Namespace) -> int:
    """Print the labels, most likely first, with probabilities."""
    reply = _stub(args).Classify(
        gateway_pb2.ClassifyRequest(model=args.model, text=args.text, labels=args.labels),
        timeout=args.timeout,
    )
    for score in reply.scores:
        print(
            f"{score.probability:6.1%}  {score.label}  (log-likelihood {score.log_likelihood:.3f})"
        )
    return EXIT_OK


def cmd_models_list(args: argparse.Namespace) -> int:
    """Models served by some worker."""
    reply = _stub(args).ListModels(gateway_pb2.ListModelsRequest(), timeout=args.timeout)
    for model in reply.models:
        default = " (default)" if model.default else ""
        print(f"{model.name}{default}  workers={model.workers}")
    return EXIT_OK


def cmd_models_import(args: argparse.Namespace) -> int:
    """Convert a GGUF file into a model folder workers can load (runs locally)."""
    from llmos.model.gguf_import import import_gguf
    from llmos.model.names import MODEL_NAME

    name = args.name or args.gguf.stem.lower().replace(".", "-")
    if not MODEL_NAME.match(name):
        print(f"llmos: {name!r} is not a valid model name; pass --name", file=sys.stderr)
        return EXIT_NOT_READY
    target = Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models" / name
    config = import_gguf(args.gguf, target)
    print(f"imported {args.gguf.name} as {name}: {config.parameter_count:,} parameters in {target}")
    return EXIT_OK


def _issuer(args: argparse.Namespace) -> Issuer:
    url = args.issuer or os.environ.get("LLMOS_ISSUER") or stack_info().get("issuer")
    if not url:
        raise NotSignedIn("which issuer? pass --issuer URL or set LLMOS_ISSUER")
    return Issuer(str(url), ca_file(args.ca_file))


def _claims(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified: for showing the user who they are, never for trust."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


def _secret_lines(prompts: list[str]) -> list[str]:
    """Read secrets from the terminal (hidden), or one per line from a pipe."""
    if sys.stdin.isatty():
        return [getpass.getpass(f"{p}: ") if "password" in p else input(f"{p}: ") for p in prompts]
    return [sys.stdin.readline().rstrip("\n") for _ in prompts]


def cmd_login(args: argparse.Namespace) -> int:
    """Sign a person in with password + TOTP; keep the tokens in the session file (0600)."""
    issuer = _issuer(args)
    username = args.username or input("user name: ")
    password, code = _secret_lines(["password", "one-time code"])
    try:
        token = issuer.password_login(CLI_CLIENT_ID, username, password, code.strip())
    except OAuthError as exc:
        print(f"llmos: sign-in refused: {exc.description or exc.error}", file=sys.stderr)
        return EXIT_REFUSED
    session = session_from_token(issuer, username, token)
    session.save(session_path())
    claims = _claims(session.access_token)
    print(
        f"signed in as {username} (tenant {claims.get('tenant', '?')}; "
        f"scopes: {token.get('scope', '')})"
    )
    return EXIT_OK


def cmd_logout(args: argparse.Namespace) -> int:
    """Revoke the session's tokens and forget them."""
    path = session_path()
    session = Session.load(path)
    if session is None:
        print("not signed in")
        return EXIT_OK
    issuer = Issuer(session.issuer, ca_file(args.ca_file))
    for token in (session.refresh_token, session.access_token):
        if token:
            try:
                issuer.revoke(token, client_id=session.client_id)
            except (OAuthError, OSError) as exc:
                print(f"llmos: could not revoke a token: {exc}", file=sys.stderr)
    path.unlink(missing_ok=True)
    print(f"signed out {session.username}")
    return EXIT_OK


def cmd_whoami(args: argparse.Namespace) -> int:
    """Who the current token says you are."""
    claims = _claims(access_token(args.token, args.credentials, ca_file(args.ca_file)))
    shown = {k: claims.get(k) for k in ("sub", "tenant", "scope", "client_id", "iss", "exp")}
    print(json.dumps(shown, indent=2))
    return EXIT_OK


def _quota(args: argparse.Namespace) -> admin_pb2.Quota | None:
    if args.rpm is None and args.tpm is None:
        return None
    return admin_pb2.Quota(requests_per_minute=args.rpm or 0, tokens_per_minute=args.tpm or 0)


def cmd_admin(args: argparse.Namespace) -> int:
    """Identity and quota administration (needs the `admin` scope)."""
    admin, t = _admin(args), args.timeout
    action = args.admin_action
    reply: Message
    if action == "tenant-create":
        reply = admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name=args.name, quota=_quota(args)), timeout=t
        )
    elif action == "tenant-list":
        reply = admin.ListTenants(admin_pb2.ListTenantsRequest(), timeout=t)
    elif action == "client-create":
        request = admin_pb2.CreateClientRequest(
            tenant=args.tenant, name=args.name, scopes=args.scope or []
        )
        reply = admin.CreateClient(request, timeout=t)
    elif action == "client-list":
        reply = admin.ListClients(admin_pb2.ListClientsRequest(tenant=args.tenant), timeout=t)
    elif action == "client-delete":
        reply = admin.DeleteClient(admin_pb2.DeleteClientRequest(client_id=args.id), timeout=t)
    elif action == "user-create":
        (password,) = _secret_lines(["password for the new user"])
        user = admin_pb2.CreateUserRequest(
            tenant=args.tenant, username=args.username, password=password, scopes=args.scope or []
        )
        reply = admin.CreateUser(user, timeout=t)
    elif action == "user-list":
        reply = admin.ListUsers(admin_pb2.ListUsersRequest(tenant=args.tenant), timeout=t)
    elif action == "user-delete":
        reply = admin.DeleteUser(admin_pb2.DeleteUserRequest(username=args.username), timeout=t)
    elif action == "quota":
        quota = _quota(args) or admin_pb2.Quota()
        target = {"client_id": args.client} if args.client else {"tenant": args.tenant}
        reply = admin.SetQuota(admin_pb2.SetQuotaRequest(quota=quota, **target), timeout=t)
    elif action == "scopes":
        target = {"client_id": args.client} if args.client else {"username": args.user}
        reply = admin.SetScopes(
            admin_pb2.SetScopesRequest(scopes=args.scope or [], **target), timeout=t
        )
    elif args.which == "storage":  # rotate-key storage
        return int(cmd_storage_admin(args))
    else:  # rotate-key [signing]
        reply = admin.RotateSigningKey(admin_pb2.RotateSigningKeyRequest(), timeout=t)
    _print_json(reply)
    return EXIT_OK


def _add_admin_commands(commands: Any) -> Callable[[str, str], argparse.ArgumentParser]:
    admin = commands.add_parser("admin", help="manage tenants, clients, users, quotas, keys")
    actions = admin.add_subparsers(dest="admin_action", required=True)

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.set_defaults(run=cmd_admin)
        return parser

    def limits(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--rpm", type=int, help="requests per minute (0: unlimited)")
        parser.add_argument("--tpm", type=int, help="model tokens per minute (0: unlimited)")

    tenant_create = action("tenant-create", "create a tenant")
    tenant_create.add_argument("name")
    limits(tenant_create)
    action("tenant-list", "list tenants")
    client_create = action("client-create", "create a program's client id and secret")
    client_create.add_argument("--name", required=True)
    client_create.add_argument("--tenant", default="", help="default: your tenant")
    client_create.add_argument("--scope", action="append", help="scope to grant (repeatable)")
    action("client-list", "list clients").add_argument("--tenant", default="")
    action("client-delete", "delete a client").add_argument("id")
    user_create = action("user-create", "create a person (password from the terminal)")
    user_create.add_argument("username")
    user_create.add_argument("--tenant", default="", help="default: your tenant")
    user_create.add_argument("--scope", action="append", help="scope to grant (repeatable)")
    action("user-list", "list users").add_argument("--tenant", default="")
    action("user-delete", "delete a user").add_argument("username")
    quota = action("quota", "set a tenant's or a client's limits")
    target = quota.add_mutually_exclusive_group(required=True)
    target.add_argument("--tenant")
    target.add_argument("--client")
    limits(quota)
    scopes = action("scopes", "replace a client's or a user's scopes")
    whom = scopes.add_mutually_exclusive_group(required=True)
    whom.add_argument("--client")
    whom.add_argument("--user")
    scopes.add_argument("--scope", action="append", help="scope to grant (repeatable)")
    rotate = action(
        "rotate-key",
        "signing: new token-signing key (old tokens stay valid until they expire); "
        "storage: new key-encryption key, every data key re-wrapped, no data re-encrypted",
    )
    rotate.add_argument("which", nargs="?", choices=("signing", "storage"), default="signing")
    return action


def build_parser() -> argparse.ArgumentParser:
    """The `llmos` command line."""
    parser = argparse.ArgumentParser(prog="llmos", description="Client of LLM OS.")
    parser.add_argument("--gateway", help=f"HOST:PORT of the gateway (default {DEFAULT_GATEWAY})")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    parser.add_argument("--token", help="an access token to use as is")
    parser.add_argument("--credentials", help="JSON file with client_id and client_secret")
    parser.add_argument("--ca-file", help="CA certificate that signed the gateway's (TLS)")
    parser.add_argument("--issuer", help="OAuth issuer URL (for login)")
    commands = parser.add_subparsers(dest="command", required=True)
    login = commands.add_parser("login", help="sign in with password + one-time code")
    login.add_argument("--username")
    login.set_defaults(run=cmd_login)
    commands.add_parser("logout", help="revoke and forget the session").set_defaults(run=cmd_logout)
    commands.add_parser("whoami", help="show the current identity").set_defaults(run=cmd_whoami)
    admin_action = _add_admin_commands(commands)
    cluster = commands.add_parser("cluster", help="workers, live use, queue, fair share")
    cluster.add_argument("--json", action="store_true", help="machine-readable output")
    cluster.set_defaults(run=cmd_cluster)
    jobs = commands.add_parser("jobs", help="list, show, cancel or watch jobs")
    jobs_actions = jobs.add_subparsers(dest="jobs_action", required=True)
    jobs_actions.add_parser("list", help="the tenant's jobs, newest first").set_defaults(
        run=cmd_jobs
    )
    for action, text in (("get", "one job"), ("cancel", "cancel a job"), ("watch", "follow")):
        parser_ = jobs_actions.add_parser(action, help=text)
        parser_.add_argument("id")
        parser_.set_defaults(run=cmd_jobs)
    status = commands.add_parser("status", help="health of every service")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=cmd_status)
    events = commands.add_parser("events", help="follow events (JSON lines)")
    events.add_argument("--kind", action="append", help="service, job or model (repeatable)")
    events.set_defaults(run=cmd_events)

    generate = commands.add_parser("generate", help="stream a completion or chat answer")
    generate.add_argument("prompt")
    generate.add_argument("--chat", action="store_true", help="treat the prompt as a user message")
    generate.add_argument("--system", default="", help="system message (with --chat)")
    generate.add_argument("--model", default="", help="default: the default model")
    generate.add_argument("--max-tokens", type=int, default=0)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--top-p", type=float, default=0.0)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", help="stop sequence (repeatable)")
    generate.add_argument("--quiet", action="store_true", help="no usage line on stderr")
    generate.add_argument(
        "--priority", default="normal", help="critical, high, normal (default) or batch"
    )
    generate.set_defaults(run=cmd_generate)

    embed = commands.add_parser("embed", help="embeddings of texts")
    embed.add_argument("texts", nargs="+")
    embed.add_argument("--model", default="")
    embed.set_defaults(run=cmd_embed)

    classify = commands.add_parser("classify", help="rank labels for a text")
    classify.add_argument("text")
    classify.add_argument("labels", nargs="+")
    classify.add_argument("--model", default="")
    classify.set_defaults(run=cmd_classify)

    models = commands.add_parser("models", help="list or import models")
    model_commands = models.add_subparsers(dest="models_command", required=True)
    model_commands.add_parser("list", help="models being served").set_defaults(run=cmd_models_list)
    importer = model_commands.add_parser("import", help="import a GGUF file")
    importer.add_argument("--gguf", type=Path, required=True)
    importer.add_argument("--name", help="model name (default: from the file name)")
    importer.set_defaults(run=cmd_models_import)
    add_storage_commands(commands, model_commands, admin_action)
    add_train_command(commands)
    add_audit_commands(commands)
    parser.set_defaults(storage=_storage, gateway_stub=_stub, channel=_channel)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `llmos` command."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except grpc.RpcError as exc:
        code = exc.code()
        detail = exc.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            print(
                f"llmos: gateway at {gateway_address(args.gateway)} is unreachable: {detail}",
                file=sys.stderr,
            )
            return EXIT_UNREACHABLE
        print(f"llmos: {code.name}: {detail}", file=sys.stderr)
        return EXIT_REFUSED
    except InvalidArgument as exc:
        print(f"llmos: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except NotSignedIn as exc:
        print(f"llmos: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except OAuthError as exc:
        print(f"llmos: the issuer refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `llmos ... | head`: the reader has what it wanted
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
