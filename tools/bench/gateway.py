"""`make bench-gateway`: what the gateway adds to a call, measured side by side.

Starts NATS, Redis, the scheduler and a gateway (its own processes, on free ports), then
alternates the same RPC — GetClusterStatus — called directly on the scheduler (mutual
TLS, as the gateway's certificate) and through the gateway with a bearer token
(verification, scope check, rate-limit admission in Redis, audit record, a signed tenant
assertion, forwarding over mutual TLS). Prints one JSON line: median and p99 of each path,
the added latency and the ratios. Single client, sequential calls, after a warm-up.

Then, in the same run, what the door costs: `/token` requests signing a person in with a
wrong password (hashed with scrypt, 16 MiB), a program with a wrong secret, the same
from a blocked address (refused at the door), and correct ones; alternated, one
connection each, from allowlisted addresses except the blocked one.

Line 2: what metrics and tracing cost the gateway path: plain processes against ones
serving /metrics and exporting spans over OTLP, alternated (`--observability-rounds`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from llmos.config import environment_without_llmos
from llmos.ports import free_port
from llmos.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc
from tools.devstack.gateway_process import GatewayProcess, bearer, start_gateway
from tools.devstack.infra import start_nats, start_redis, terminate
from tools.otlp import OtlpReceiver
from tools.scratch import scratch_directory
from tools.standin import internal_channel


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(statistics.median(samples_ms), 3),
        "p99_ms": round(_percentile(samples_ms, 0.99), 3),
    }


def measure(calls: int, warmup: int) -> dict[str, Any]:
    """Run the comparison; everything started here is stopped here (and deleted)."""
    with scratch_directory("llmos-bench-gw-") as workdir:
        return _measure(workdir, calls, warmup, {})


def observability(calls: int, warmup: int, rounds: int) -> dict[str, Any]:
    """What /metrics and tracing (spans exported over OTLP to a receiver here) cost the
    gateway path: fresh processes each time, the two settings alternated `rounds` times."""
    receiver = OtlpReceiver().start()
    observed = {"LLMOS_METRICS_ADDR": "127.0.0.1:0", **receiver.env(prompt=False)}
    p50: dict[str, list[float]] = {"plain": [], "observed": []}
    try:
        for round_ in range(rounds):
            order = ("plain", "observed") if round_ % 2 == 0 else ("observed", "plain")
            for name in order:
                with scratch_directory("llmos-bench-gw-") as workdir:
                    env = observed if name == "observed" else {}
                    result = _measure(workdir, calls, warmup, env, door=False)
                p50[name].append(result["through_gateway"]["p50_ms"])
    finally:
        receiver.stop()
    plain, seen = statistics.median(p50["plain"]), statistics.median(p50["observed"])
    return {
        "bench": "gateway_observability",
        "rounds": rounds,
        "through_gateway_p50_ms": p50,
        "observed_vs_plain_p50": round(seen / plain, 3),
        "observed": "every service's /metrics served; OTLP tracing on (GetClusterStatus "
        "makes no span of its own: the cost is the instrumentation on the call path)",
    }


def _measure(
    workdir: Path, calls: int, warmup: int, extra: dict[str, str], door: bool = True
) -> dict[str, Any]:
    nats_server, redis_server = start_nats(workdir), start_redis(workdir)
    env = {
        **environment_without_llmos(),
        "LLMOS_NATS_URL": nats_server.public_url,
        "LLMOS_REDIS_URL": redis_server.public_url,
        "LLMOS_DATA_DIR": str(workdir / "data"),
        "LLMOS_SECRETS_DIR": str(nats_server.secrets_dir),
        "LLMOS_LOG_LEVEL": "warning",
        "LLMOS_INTRUSION_ALLOWLIST": f"{HASHED_FROM},127.0.0.1",
        "LLMOS_SIGNIN_RPM_PER_ADDRESS": "1000000",
        **extra,
    }
    scheduler_address = f"127.0.0.1:{free_port()}"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "services.scheduler"],
        env={**env, "LLMOS_LISTEN_ADDR": scheduler_address},
        stderr=subprocess.DEVNULL,
    )
    gateway: GatewayProcess | None = None
    try:
        gateway = start_gateway(env, workdir / "data")
        token = gateway.admin_token()
        request = scheduler_pb2.GetClusterStatusRequest()
        with (
            internal_channel(
                scheduler_address, "scheduler", nats_server.secrets_dir, principal=None
            ) as direct_channel,
            grpc.insecure_channel(gateway.address) as gateway_channel,
        ):
            direct = scheduler_pb2_grpc.SchedulerStub(direct_channel).GetClusterStatus
            via_gateway = gateway_pb2_grpc.GatewayStub(gateway_channel).GetClusterStatus
            metadata = bearer(token)
            _wait_for(lambda: direct(request, timeout=2))
            timings: dict[str, list[float]] = {"direct": [], "gateway": []}
            for index in range(warmup + calls):
                for name in ("direct", "gateway") if index % 2 else ("gateway", "direct"):
                    started = time.perf_counter()
                    if name == "direct":
                        direct(request, timeout=10)
                    else:
                        via_gateway(request, metadata=metadata, timeout=10)
                    if index >= warmup:
                        timings[name].append((time.perf_counter() - started) * 1000)
        d, g = _summary(timings["direct"]), _summary(timings["gateway"])
        door_costs = _door(gateway, max(50, calls // 10)) if door else {}
        return {
            "bench": "gateway",
            "rpc": "GetClusterStatus",
            "calls_per_path": calls,
            "direct_scheduler": d,
            "through_gateway": g,
            "added_p50_ms": round(g["p50_ms"] - d["p50_ms"], 3),
            "added_p99_ms": round(g["p99_ms"] - d["p99_ms"], 3),
            "gateway_vs_direct_p50": round(g["p50_ms"] / d["p50_ms"], 2),
            "gateway_vs_direct_p99": round(g["p99_ms"] / d["p99_ms"], 2),
            "gateway_path": "JWT check + scope + one Redis admission script (revocation, deleted "
            "identities, limits) + audit + signed tenant assertion + forward (mutual TLS)",
            "door": door_costs,
        }
    finally:
        if gateway is not None:
            gateway.stop()
        terminate(scheduler, 10)
        redis_server.stop()
        nats_server.stop()


HASHED_FROM, BLOCKED = "127.0.0.5", "127.0.0.6"


def _token_ms(gateway: GatewayProcess, source: str, body: str) -> float:
    """One POST /token from `source` on a new connection, in milliseconds."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(
        "127.0.0.1", gateway.http_port, timeout=30, source_address=(source, 0)
    )
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        connection.request("POST", "/token", body, headers)
        connection.getresponse().read()
    finally:
        connection.close()
    return (time.perf_counter() - started) * 1000


def _door(gateway: GatewayProcess, calls: int) -> dict[str, Any]:
    """/token: a wrong secret (hashed), a blocked address, a right secret; alternated."""
    client_id, secret = gateway.admin_credentials()
    with grpc.insecure_channel(gateway.address) as channel:
        admin_pb2_grpc.AdminStub(channel).Block(
            admin_pb2.BlockRequest(target=admin_pb2.BlockTarget(address=BLOCKED)),
            metadata=bearer(gateway.admin_token()),
            timeout=10,
        )
    program = f"grant_type=client_credentials&client_id={client_id}&client_secret="
    person = "grant_type=password&client_id=llmos-cli&password=wrong&totp=123456&username="
    kinds = {
        "wrong_password": (HASHED_FROM, person),  # + a new name each time: never locked
        "wrong_secret": (HASHED_FROM, program + "wrong"),
        "blocked_address": (BLOCKED, program + secret),
        "right_secret": ("127.0.0.1", program + secret),
    }
    timings: dict[str, list[float]] = {name: [] for name in kinds}
    for index in range(calls + 10):
        for name, (source, body) in kinds.items():
            if name == "wrong_password":
                body += f"nobody{index}"
            elapsed = _token_ms(gateway, source, body)
            if index >= 10:
                timings[name].append(elapsed)
    summary = {name: _summary(samples) for name, samples in timings.items()}
    blocked = summary["blocked_address"]["p50_ms"]
    return {
        "calls_per_kind": calls,
        **summary,
        "blocked_vs_wrong_password_p50": round(blocked / summary["wrong_password"]["p50_ms"], 3),
        "blocked_vs_wrong_secret_p50": round(blocked / summary["wrong_secret"]["p50_ms"], 3),
    }


def _wait_for(call: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=int(os.environ.get("CALLS", "2000")))
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--observability-rounds",
        type=int,
        default=2,
        help="rounds of plain vs metrics+tracing processes (0: skip)",
    )
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.calls, args.warmup)), flush=True)
    if args.observability_rounds:
        line = observability(args.calls // 2, args.warmup, args.observability_rounds)
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
