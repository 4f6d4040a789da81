"""Start the gateway: `python -m gateway`."""

import sys

from gateway.servicer import attach
from llmos.runner import ServiceDefinition, main

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("gateway", attach)))
