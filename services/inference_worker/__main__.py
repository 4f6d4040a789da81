"""Start the inference-worker service: `python -m services.inference_worker`."""

import sys

from llmos.runner import ServiceDefinition, main, no_api

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("inference-worker", no_api)))
