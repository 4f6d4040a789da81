"""Start the trainer service: `python -m services.trainer`."""

import sys

from llmos.runner import ServiceDefinition, main, no_api

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("trainer", no_api)))
