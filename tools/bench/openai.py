"""`make bench-openai`: the OpenAI-compatible API under an established load client.

Starts the whole stack (TLS on, response cache off), makes an API key, and runs NVIDIA's
`aiperf` (installed in its own virtual environment by the Makefile) against
`/v1/chat/completions`, streaming, at 1 and at 32 concurrent streams: its own time to
first token, inter-token latency and throughput. aiperf runs in request-rate mode with
the concurrency as a cap (a rate far above what the server completes, so the streams
stay saturated): in pure concurrency mode its scheduler polls without sleeping and takes
a whole core of this two-core machine from the server. Then, in the same run, the same chat
requests at 32 streams through HTTP (server-sent events) and through gRPC, alternated
round by round: `http_vs_grpc_c32` is tokens/s through HTTP / through gRPC. Every
request asks for exactly `--output-tokens` (ignore_eos), on a prompt of its own.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from llmos.v1 import admin_pb2, admin_pb2_grpc, gateway_pb2, gateway_pb2_grpc, inference_pb2
from tools.bench.engine import measuring_stack
from tools.devstack.access import admin_token, gateway_channel
from tools.scratch import scratch_directory

MODEL = "smollm2-135m-instruct"
AIPERF = Path(".venv-bench/bin/aiperf")
#: requests/s aiperf may start: ten times what 32 streams complete here, never the limit
REQUEST_RATE = 50
#: what aiperf reports, under the names this line gives them (its unit: ms)
AIPERF_METRICS = {
    "ttft_ms": "time_to_first_token",
    "itl_ms": "inter_token_latency",
}


def api_key(fields: dict[str, str]) -> str:
    """A key of a tenant without limits (a benchmark must not meet the default quotas)."""
    with gateway_channel(fields, admin_token(fields)) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        admin.CreateTenant(
            admin_pb2.CreateTenantRequest(name="bench", quota=admin_pb2.Quota()), timeout=10
        )
        made = admin.CreateApiKey(
            admin_pb2.CreateApiKeyRequest(tenant="bench", name="bench", scopes=["inference"]),
            timeout=10,
        )
    return str(made.key)


def run_aiperf(
    fields: dict[str, str], key: str, tokenizer: Path, concurrency: int, requests: int,
    out: int, workdir: Path,
) -> dict[str, Any]:  # fmt: skip
    """One aiperf profile; its summary, trimmed to what the line reports."""
    artifacts = workdir / f"aiperf-c{concurrency}"
    # aiperf reads a local tokenizer folder only with the Hub's offline switches unset
    # (it sends the path through a cache lookup otherwise); nothing here goes online
    env = {
        k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["SSL_CERT_FILE"] = fields["tls_ca"]
    command = [
        str(AIPERF), "profile",
        "--model", MODEL, "--tokenizer", str(tokenizer),
        "--url", fields["openai"].removesuffix("/v1"),
        "--endpoint-type", "chat", "--streaming", "--api-key", key,
        "--request-rate", str(REQUEST_RATE), "--concurrency", str(concurrency),
        "--request-count", str(requests),
        "--warmup-request-count", str(min(concurrency, 4)),
        "--synthetic-input-tokens-mean", "128", "--synthetic-input-tokens-stddev", "0",
        "--output-tokens-mean", str(out), "--output-tokens-stddev", "0",
        "--extra-inputs", "ignore_eos:true",
        "--random-seed", "1", "--workers-max", "2", "--record-processors", "1",
        "--ui", "none", "--no-gpu-telemetry", "--no-server-metrics",
        "--export-level", "summary", "--artifact-dir", str(artifacts),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, capture_output=True, timeout=900)
    summary = json.loads((artifacts / "profile_export_aiperf.json").read_text())
    errors = summary.get("error_request_count") or {}
    failed = errors.get("avg", 0) if isinstance(errors, dict) else errors
    if failed:
        raise SystemExit(f"aiperf saw {failed} failed requests: {summary.get('error_summary')}")
    line: dict[str, Any] = {}
    for name, metric in AIPERF_METRICS.items():
        values = summary[metric]
        for stat in ("avg", "p50", "p99"):
            line[f"{name}_{stat}"] = round(float(values[stat]), 2)
    line["output_tokens_per_s"] = round(float(summary["output_token_throughput"]["avg"]), 2)
    line["requests_per_s"] = round(float(summary["request_throughput"]["avg"]), 3)
    line["requests"] = int(summary["request_count"]["avg"])
    return line


def _prompt() -> str:
    # a prompt of its own per request: no prefix or response cache can answer for another
    return f"Request {uuid.uuid4().hex}. Write a long story about a lighthouse keeper."


async def _http_round(url: str, key: str, ca: str, streams: int, total: int, out: int) -> int:
    """`total` streamed chat completions, `streams` at a time; output tokens received."""
    context = ssl.create_default_context(cafile=ca)
    headers = {"Authorization": f"Bearer {key}"}
    tokens = 0
    limit = asyncio.Semaphore(streams)
    connector = aiohttp.TCPConnector(ssl=context, limit=streams)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> None:
            nonlocal tokens
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": _prompt()}],
                "max_tokens": out,
                "temperature": 0,
                "ignore_eos": True,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            async with limit, session.post(f"{url}/chat/completions", json=body) as response:
                response.raise_for_status()
                async for raw in response.content:
                    line = raw.strip()
                    if line.startswith(b"data: {"):
                        chunk = json.loads(line[6:])
                        if chunk.get("usage"):
                            tokens += chunk["usage"]["completion_tokens"]

        await asyncio.gather(*(one() for _ in range(total)))
    return tokens


async def _grpc_round(
    fields: dict[str, str], ca: bytes, key: str, streams: int, total: int, out: int
) -> int:
    """The same requests through the gRPC API (its own streaming Chat)."""
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    metadata = (("authorization", f"Bearer {key}"),)
    params = inference_pb2.GenerationParams(max_tokens=out, ignore_eos=True)
    tokens = 0
    limit = asyncio.Semaphore(streams)
    async with grpc.aio.secure_channel(fields["gateway"], credentials) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def one() -> None:
            nonlocal tokens
            request = gateway_pb2.ChatRequest(
                model=MODEL,
                messages=[inference_pb2.ChatMessage(role="user", content=_prompt())],
                params=params,
            )
            async with limit:
                async for reply in stub.Chat(request, metadata=metadata, timeout=600):
                    if reply.done:
                        tokens += reply.usage.completion_tokens

        await asyncio.gather(*(one() for _ in range(total)))
    return tokens


def http_vs_grpc(
    fields: dict[str, str], key: str, streams: int, total: int, out: int, rounds: int
) -> dict[str, Any]:
    """Tokens/s of each API, alternated round by round (this machine is shared and noisy:
    the ratio of the two, in one run, is what holds)."""
    rates: dict[str, list[float]] = {"http": [], "grpc": []}
    ca = Path(fields["tls_ca"]).read_bytes()
    for _ in range(rounds):
        for api in ("grpc", "http"):
            started = time.perf_counter()
            if api == "http":
                round_ = _http_round(fields["openai"], key, fields["tls_ca"], streams, total, out)
            else:
                round_ = _grpc_round(fields, ca, key, streams, total, out)
            tokens = asyncio.run(round_)
            if tokens != total * out:
                raise SystemExit(f"{api}: {tokens} tokens, expected {total * out}")
            rates[api].append(tokens / (time.perf_counter() - started))
    http, grpc_ = statistics.median(rates["http"]), statistics.median(rates["grpc"])
    return {
        "http_c32_tokens_per_s": round(http, 2),
        "grpc_c32_tokens_per_s": round(grpc_, 2),
        "http_vs_grpc_c32": round(http / grpc_, 3),
        "rounds": {k: [round(v, 1) for v in values] for k, values in rates.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--c1-requests", type=int, default=16)
    parser.add_argument("--c32-requests", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="HTTP/gRPC rounds, alternated")
    parser.add_argument("--skip-aiperf", action="store_true", help="only HTTP vs gRPC")
    args = parser.parse_args(argv)
    # stopped by a signal, still stop the stack (the `finally` below runs on SystemExit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if not AIPERF.exists():
        raise SystemExit(f"{AIPERF} is missing: run `make bench-openai`, which installs it")
    models = Path(os.environ.get("LLMOS_DATA_DIR", "var")).resolve() / "models"
    out = args.output_tokens
    with scratch_directory("llmos-bench-openai-") as workdir:
        launcher = measuring_stack(workdir / "data", models, {})
        try:
            fields = launcher.start()
            key = api_key(fields)
            tokenizer = models / MODEL
            line: dict[str, Any] = {
                "bench": "openai",
                "client": "aiperf 0.13.0",
                "output_tokens": out,
            }
            if not args.skip_aiperf:
                line["aiperf_c1"] = run_aiperf(
                    fields, key, tokenizer, 1, args.c1_requests, out, workdir
                )
                line["aiperf_c32"] = run_aiperf(
                    fields, key, tokenizer, 32, args.c32_requests, out, workdir
                )
            line.update(http_vs_grpc(fields, key, 32, 64, out, args.rounds))
        finally:
            launcher.stop()
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
