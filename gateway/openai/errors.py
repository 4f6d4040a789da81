"""Errors as the OpenAI SDKs understand them: `{"error": {"message", "type", "param",
"code"}}` with the HTTP status each SDK maps to its exception class (400
BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError,
429 RateLimitError, 503 and 500 InternalServerError, retried by the SDKs)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from aiohttp import web

from llmos import errors
from llmos.rpc import REQUEST_ID_KEY

OPENAI_PREFIX = "/v1/"

#: domain error -> (HTTP status, OpenAI error type, code)
_STATUS: list[tuple[type[errors.LLMOSError], int, str, str | None]] = [
    (errors.InvalidArgument, 400, "invalid_request_error", None),
    (errors.Unauthenticated, 401, "authentication_error", "invalid_api_key"),
    (errors.PermissionDenied, 403, "permission_error", None),
    (errors.NotFound, 404, "not_found_error", None),
    (errors.AlreadyExists, 409, "conflict_error", None),
    (errors.FailedPrecondition, 400, "invalid_request_error", None),
    (errors.ResourceExhausted, 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.Unavailable, 503, "service_unavailable_error", None),
    (errors.Cancelled, 499, "cancelled", None),
]

#: the gRPC API's field names -> the OpenAI request's (`params.top_p` -> `top_p`)
_INDEXED = re.compile(r"^(\w+)(\[\d+\].*)?$")
_RENAMED = {"inputs": "input", "priority": "x-llmos-priority"}


def public_param(field: str, aliases: dict[str, str] | None = None) -> str:
    """The request parameter an InvalidArgument's field stands for, as the caller wrote
    it (`aliases`: parameters the caller spelt another accepted way)."""
    name = field.removeprefix("params.")
    match = _INDEXED.match(name)
    if match:
        base, rest = match.group(1), match.group(2) or ""
        base = (aliases or {}).get(base, _RENAMED.get(base, base))
        name = base + rest
    return name


def error_body(
    message: str, kind: str, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class Failure:
    """What a call that failed answers: an HTTP status, OpenAI's error object, headers.
    Before a stream begins it is the response; after, its body is the last event."""

    status: int
    body: dict[str, object]
    headers: dict[str, str]

    def response(self) -> web.Response:
        return web.json_response(self.body, status=self.status, headers=self.headers)


def failure_of(
    exc: BaseException,
    retry_after_s: float | None = None,
    request_id: str = "",
    aliases: dict[str, str] | None = None,
) -> Failure:
    """The answer for a call that ended with `exc`. Unexpected errors name only the
    request id (their details are in the gateway's log)."""
    headers = {REQUEST_ID_KEY: request_id} if request_id else {}
    mapped = next((entry for entry in _STATUS if isinstance(exc, entry[0])), None)
    if mapped is None:
        message = f"internal error (request id {request_id})" if request_id else "internal error"
        return Failure(500, error_body(message, "server_error"), headers)
    _, status, kind, code = mapped
    param = None
    message = str(exc)
    if isinstance(exc, errors.InvalidArgument):
        param = public_param(exc.field, aliases)
        message = f"{param}: {exc.reason}"
    if isinstance(exc, errors.NotFound) and "model" in message:
        code = "model_not_found"
    retry = retry_after_s
    if retry is None and isinstance(exc, errors.ResourceExhausted):
        retry = exc.retry_after_s
    if retry is not None or status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(retry or 1)))
    return Failure(status, error_body(message, kind, param, code), headers)
