"""`make bench-cluster`: generations/s and tokens/s with one and with two worker hosts.

Measured: the three hosts of tools/devstack/hosts.py (network namespaces on this
machine), a closed loop of clients through the gateway, first with the workers of hosts
B and C, then with B's alone (C's stopped). Every worker, and so every host, shares this
machine's cores: where the machine has fewer cores than the two workers could use, the
work is CPU-bound and `scale_2_vs_1` says what the machine allows, not what two real
machines would give.

Simulated: the real scheduling core (queue, admission, placement: tools/bench/scheduler.py)
over 1, 2 and 50 simulated workers, each slot generating at a fixed rate, saturated by a
closed loop; `scale_50_vs_1` is what placement achieves of the ideal 50.

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from llmos.model.default import ensure_default_model
from llmos.priority import PriorityClass
from llmos.v1 import gateway_pb2, gateway_pb2_grpc, inference_pb2, scheduler_pb2
from tools.bench.scheduler import SLOTS_PER_WORKER, TOKENS_PER_S_PER_SLOT, Cluster, closed_loop
from tools.devstack.access import admin_token, gateway_channel
from tools.devstack.hosts import Hosts, HostsOptions
from tools.harness import eventually
from tools.netns import available

#: generations each worker runs at once (LLMOS_MAX_INFLIGHT)
INFLIGHT = 2
MAX_TOKENS = 32
SIMULATED_COST = 200


def simulate(size: int, seconds: float = 600.0) -> dict[str, float]:
    """Tokens/s and generations/s of `size` simulated workers kept saturated."""
    cluster = Cluster(size=size)
    closed_loop(cluster, {"load": (2 * size * SLOTS_PER_WORKER, SIMULATED_COST)},
                PriorityClass.NORMAL)  # fmt: skip
    warmup = seconds * 0.1
    cluster.run(until=seconds, measure_from=warmup)
    tokens_per_s = cluster.served["load"] / (seconds - warmup)
    return {"tokens_per_s": tokens_per_s, "gens_per_s": tokens_per_s / SIMULATED_COST}


def load(stub: gateway_pb2_grpc.GatewayStub, clients: int, seconds: float) -> dict[str, float]:
    """`clients` callers each sending one generation after another for `seconds`."""
    deadline = time.monotonic() + seconds
    done = {"gens": 0, "tokens": 0, "errors": 0}
    lock = threading.Lock()

    def caller(index: int) -> None:
        count = 0
        while time.monotonic() < deadline:
            request = gateway_pb2.GenerateRequest(
                prompt=f"Client {index}, story {count}:",
                params=inference_pb2.GenerationParams(max_tokens=MAX_TOKENS, ignore_eos=True),
            )
            try:
                responses = list(stub.Generate(request, timeout=120))
            except grpc.RpcError:
                with lock:
                    done["errors"] += 1
                continue
            count += 1
            with lock:
                done["gens"] += 1
                done["tokens"] += responses[-1].usage.completion_tokens

    started = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(caller, range(clients)))
    elapsed = time.monotonic() - started
    return {
        "gens_per_s": done["gens"] / elapsed,
        "tokens_per_s": done["tokens"] / elapsed,
        "errors": done["errors"],
    }


def _workers(stub: gateway_pb2_grpc.GatewayStub) -> int:
    status = stub.GetClusterStatus(scheduler_pb2.GetClusterStatusRequest(), timeout=10)
    return sum(1 for w in status.workers if w.instance.service == "inference-worker")


def measure_hosts(seconds: float, models: Path) -> dict[str, Any]:
    """Two worker hosts, then one, under the same closed loop."""
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as data:
        options = HostsOptions(Path(data), models.parent, env={"LLMOS_MAX_INFLIGHT": str(INFLIGHT)})
        hosts = Hosts(options).start()
        try:
            with gateway_channel(hosts.fields, admin_token(hosts.fields)) as channel:
                stub = gateway_pb2_grpc.GatewayStub(channel)
                clients = 2 * INFLIGHT
                load(stub, clients, 8.0)  # warm both workers (first calls are slow)
                two = load(stub, clients, seconds)
                (worker_c,) = hosts.on("c", "inference-worker")
                worker_c.stop(30)
                eventually(lambda: _workers(stub) == 1, 30, what="host C's worker gone")
                one = load(stub, clients, seconds)
        finally:
            hosts.stop()
    return {"one_worker_host": one, "two_worker_hosts": two, "clients": clients}


def measure(seconds: float) -> dict[str, Any]:
    sim = {size: simulate(size) for size in (1, 2, 50)}
    result: dict[str, Any] = {
        "bench": "cluster",
        "cpus": os.cpu_count(),
        "simulated": {
            "workers": {str(k): {m: round(v, 2) for m, v in f.items()} for k, f in sim.items()},
            "scale_2_vs_1": round(sim[2]["tokens_per_s"] / sim[1]["tokens_per_s"], 3),
            "scale_50_vs_1": round(sim[50]["tokens_per_s"] / sim[1]["tokens_per_s"], 3),
            "worker": f"{SLOTS_PER_WORKER} slots x {TOKENS_PER_S_PER_SLOT:g} tokens/s, "
            f"{SIMULATED_COST}-token generations, real scheduler placement",
        },
    }
    if why := available():
        result["hosts"] = f"skipped: {why}"
        return result
    models = ensure_default_model(Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "models")
    before = os.getloadavg()[0]
    real = measure_hosts(seconds, models)
    one, two = real["one_worker_host"], real["two_worker_hosts"]
    result["hosts"] = {
        "one_worker_host": {k: round(v, 2) for k, v in one.items()},
        "two_worker_hosts": {k: round(v, 2) for k, v in two.items()},
        "scale_2_vs_1": round(two["tokens_per_s"] / one["tokens_per_s"], 3),
        "load": f"{real['clients']} clients in a closed loop, {MAX_TOKENS}-token generations, "
        f"{seconds:g} s each; each worker {INFLIGHT} at once, one torch thread",
        "note": "both worker hosts share this machine's cores: CPU-bound where they are few",
        # what else ran meanwhile: other processes on the same cores skew both figures
        "loadavg_1m": {"before": round(before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load per configuration")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
