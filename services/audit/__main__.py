"""Start the audit service: `python -m services.audit`."""

import sys

from llmos.runner import ServiceDefinition, main, no_api

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("audit", no_api)))
