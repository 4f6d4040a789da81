"""Start the storage service: `python -m services.storage`."""

import sys

from llmos.runner import ServiceDefinition, main
from services.storage.app import attach
from services.storage.options import read_storage_options

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("storage", attach, configure=read_storage_options)))
