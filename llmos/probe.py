"""`python -m llmos.probe HOST:PORT [SERVICE]`: exit 0 when the gRPC server there is SERVING.

For container health checks and orchestrators that cannot speak grpc.health.v1 themselves.
An internal service (SERVICE other than `gateway`) speaks mutual TLS only: the probe
presents an operator identity from the secrets dir (`LLMOS_SECRETS_DIR`, else
`<LLMOS_DATA_DIR>/secrets`), which may check health and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from llmos.health import SERVING, check_health
from llmos.identity import operator_identity


def _secrets_dir() -> Path:
    explicit = os.environ.get("LLMOS_SECRETS_DIR")
    return Path(explicit) if explicit else Path(os.environ.get("LLMOS_DATA_DIR", "var")) / "secrets"


def main(argv: list[str]) -> int:
    """Probe one address; print why when it is not serving."""
    if len(argv) not in (1, 2):
        print("usage: python -m llmos.probe HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    service = argv[1] if len(argv) == 2 else "gateway"
    identity = None if service == "gateway" else operator_identity(_secrets_dir(), "probe")
    state, detail = asyncio.run(
        check_health(argv[0], timeout_s=3.0, identity=identity, server=service)
    )
    if state != SERVING:
        print(detail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
