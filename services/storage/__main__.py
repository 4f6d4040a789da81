"""Start the storage service: `python -m services.storage`."""

import sys

from llmos.runner import ServiceDefinition, main, no_api

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("storage", no_api)))
