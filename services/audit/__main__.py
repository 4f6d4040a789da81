"""Start the audit service: `python -m services.audit`."""

import sys

from llmos.runner import ServiceDefinition, main
from services.audit.app import attach
from services.audit.options import read_audit_options

if __name__ == "__main__":
    sys.exit(main(ServiceDefinition("audit", attach, configure=read_audit_options)))
