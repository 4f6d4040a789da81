"""Start the trainer service: `python -m services.trainer`."""

import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack

import grpc

from llmos.capacity import local_capacity
from llmos.modelstore import ModelStore
from llmos.runner import ServiceContext, ServiceDefinition, main
from services.trainer.options import TrainerOptions, read_trainer_options
from services.trainer.runner import JobRunner


async def attach(
    ctx: ServiceContext, server: grpc.aio.Server, stack: AsyncExitStack
) -> Sequence[str]:
    """Offer this machine's capacity to the scheduler and run the jobs it assigns."""
    options: TrainerOptions = ctx.options
    ctx.instance.capacity.CopyFrom(local_capacity())
    if options.processes:
        ctx.instance.capacity.processes = options.processes
    data_dir = ctx.settings.data_dir
    audit = ctx.audit
    runner = JobRunner(
        ctx.nats,
        ctx.instance,
        work_dir=data_dir / "trainer" / ctx.instance.instance_id,
        checkpoint_dir=options.checkpoints(data_dir),
        models_dir=options.models(data_dir),
        stop_grace_s=options.stop_grace_s,
        stores=lambda tenant: ModelStore(ctx.links, tenant),
        audit=audit,
    )
    await runner.start()
    stack.push_async_callback(runner.close)
    ctx.status = runner.status
    return ()


if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("trainer", attach, configure=read_trainer_options)))
