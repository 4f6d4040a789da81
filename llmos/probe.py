"""`python -m llmos.probe HOST:PORT`: exit 0 when the gRPC server there is SERVING.

For container health checks and orchestrators that cannot speak grpc.health.v1 themselves.
"""

from __future__ import annotations

import asyncio
import sys

from llmos.health import SERVING, check_health


def main(argv: list[str]) -> int:
    """Probe one address; print why when it is not serving."""
    if len(argv) != 1:
        print("usage: python -m llmos.probe HOST:PORT", file=sys.stderr)
        return 2
    state, detail = asyncio.run(check_health(argv[0], timeout_s=3.0))
    if state != SERVING:
        print(detail, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
