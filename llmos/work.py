"""The work protocol between the gateway and workers: errors as data.

A worker cannot raise into the gateway, so it reports a WorkError (a gRPC status name,
the field at fault, a sentence) and the gateway turns it back into the domain error.
"""

from __future__ import annotations

from llmos import errors
from llmos.v1 import inference_pb2

_CODE_OF: dict[type[errors.LLMOSError], str] = {
    errors.InvalidArgument: "INVALID_ARGUMENT",
    errors.NotFound: "NOT_FOUND",
    errors.ResourceExhausted: "RESOURCE_EXHAUSTED",
    errors.Unavailable: "UNAVAILABLE",
    errors.FailedPrecondition: "FAILED_PRECONDITION",
    errors.Cancelled: "CANCELLED",
    errors.PermissionDenied: "PERMISSION_DENIED",
}


def code_of(error: errors.LLMOSError) -> str:
    """The gRPC status name a domain error travels as."""
    return next((c for cls, c in _CODE_OF.items() if isinstance(error, cls)), "INTERNAL")


def work_error(error: errors.LLMOSError) -> inference_pb2.WorkError:
    """A domain error as a WorkError message."""
    if isinstance(error, errors.InvalidArgument):
        return inference_pb2.WorkError(code=code_of(error), field=error.field, message=error.reason)
    return inference_pb2.WorkError(code=code_of(error), message=str(error))


def domain_error(error: inference_pb2.WorkError) -> errors.LLMOSError:
    """The domain error a WorkError stands for (unknown codes read as UNAVAILABLE)."""
    if error.code == "INVALID_ARGUMENT":
        return errors.InvalidArgument(error.field or "request", error.message)
    for cls, code in _CODE_OF.items():
        if code == error.code:
            return cls(error.message)
    return errors.Unavailable(error.message or "the worker failed")
