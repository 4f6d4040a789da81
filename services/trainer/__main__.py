"""Start the trainer service: `python -m services.trainer`."""

import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc

from llmos.capacity import local_capacity
from llmos.runner import ServiceContext, ServiceDefinition, main
from llmos.v1 import scheduler_pb2


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Announce this machine's capacity in the registry (training arrives with its issue)."""
    ctx.instance.capacity.CopyFrom(local_capacity())
    ctx.status = lambda: scheduler_pb2.WorkerStatus()  # no job runs here yet: no slots
    return ()


if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("trainer", attach)))
