"""How errors cross Triton: a model raises with a coded message, the client decodes it.

Triton carries only an error string from a model to its client, so the string is
`LLMOS|CODE|field|reason`; anything else from Triton is reported as UNAVAILABLE.
"""

from __future__ import annotations

import logging

from llmos import errors
from llmos.v1 import inference_pb2
from llmos.work import code_of, domain_error

PREFIX = "LLMOS|"

log = logging.getLogger("llmos.worker")


def encode_error(error: errors.LLMOSError) -> str:
    """The message a Triton model raises for a domain error."""
    field = error.field if isinstance(error, errors.InvalidArgument) else ""
    reason = error.reason if isinstance(error, errors.InvalidArgument) else str(error)
    return f"{PREFIX}{code_of(error)}|{field}|{reason}"


def decode_error(message: str) -> inference_pb2.WorkError:
    """The WorkError for a Triton error message (coded or not)."""
    start = message.find(PREFIX)
    if start < 0:  # not ours: details (often a traceback) go to the log, not the caller
        log.error("inference server error", extra={"detail": message})
        return inference_pb2.WorkError(
            code="UNAVAILABLE", message="the inference server failed to run the request; retry"
        )
    code, _, rest = message[start + len(PREFIX) :].partition("|")
    field, _, reason = rest.partition("|")
    reason = reason.strip().splitlines()[0] if reason.strip() else ""
    return inference_pb2.WorkError(code=code, field=field, message=reason)


def triton_error(message: str) -> errors.LLMOSError:
    """The domain error behind a Triton error message."""
    return domain_error(decode_error(message))
