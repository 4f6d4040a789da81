"""LLM OS shared plumbing: configuration, logging, the service runner and connections.

Every service imports its cross-cutting machinery from here, so each idea exists once.
Generated protobuf stubs live in the `llmos.v1` subpackage (`make protos`).
"""

__version__ = "0.1.0"
