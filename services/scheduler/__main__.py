"""Start the scheduler service: `python -m services.scheduler`."""

import sys

from llmos.runner import ServiceDefinition, main
from services.scheduler.app import attach
from services.scheduler.options import read_scheduler_options

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("scheduler", attach, configure=read_scheduler_options)))
