"""Start the gateway: `python -m gateway`."""

import sys
from contextlib import AsyncExitStack

from gateway.options import read_gateway_options
from gateway.runtime import prepare
from gateway.servicer import attach
from llmos.runner import Prepared, ServiceContext, ServiceDefinition, main


async def _prepare(ctx: ServiceContext, stack: AsyncExitStack) -> Prepared:
    runtime = await prepare(ctx, stack)
    options = runtime.options
    tls = None
    if options.tls_cert and options.tls_key:
        tls = (options.tls_cert.read_bytes(), options.tls_key.read_bytes())
    return Prepared(runtime, runtime.guard, options.max_request_bytes, tls)


if __name__ == "__main__":
    sys.exit(
        main(
            ServiceDefinition(
                "gateway", attach, configure=read_gateway_options, prepare=_prepare, public=True
            )
        )
    )
