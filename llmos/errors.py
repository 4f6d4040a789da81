"""Domain errors: what went wrong, in words a caller can act on.

Business logic raises these and imports no transport; `llmos.rpc` maps each kind to
its gRPC status code in one place.
"""

from __future__ import annotations


class LLMOSError(Exception):
    """Base of every error meant for a caller; its message is safe to show them."""


class InvalidArgument(LLMOSError):
    """A request field is missing or has a value that cannot be accepted."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class Unsupported(InvalidArgument):
    """A well-formed request asking for something this system does not offer (a tool
    call, a JSON schema): refused like any invalid argument, but no sign of an attack."""


class NotFound(LLMOSError):
    """The named object does not exist (or is not visible to the caller)."""


class AlreadyExists(LLMOSError):
    """An object with that identity exists already."""


class FailedPrecondition(LLMOSError):
    """The system is not in a state where the request can run (e.g. alias to a deleted version)."""


class Unauthenticated(LLMOSError):
    """No valid credentials came with the request."""


class PermissionDenied(LLMOSError):
    """The caller is known but not allowed to do this."""


class ResourceExhausted(LLMOSError):
    """A limit or quota is reached; the caller may retry after `retry_after_s`."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(LLMOSError):
    """A dependency is down or a worker was lost; the call is safe to retry."""


class Cancelled(LLMOSError):
    """The work was cancelled before it finished."""


class DataLoss(LLMOSError):
    """Stored data failed verification and is not served."""
