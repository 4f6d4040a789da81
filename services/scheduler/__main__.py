"""Start the scheduler service: `python -m services.scheduler`."""

import sys

from llmos.runner import ServiceDefinition, main, no_api

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("scheduler", no_api)))
