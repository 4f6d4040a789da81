"""gRPC cross-cutting concerns for every LLM OS server, written once.

`CallContextInterceptor` gives each call a request id (the caller's `x-request-id`
or a new one), makes it visible to logging, and turns domain errors into gRPC status
codes with the error's sentence. Anything unexpected is logged with its traceback and
answered INTERNAL naming only the request id: a stack trace never reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from google.protobuf.message import DecodeError

from llmos import errors, tracing
from llmos.log import request_id_var
from llmos.protocheck import invalid_utf8_field

REQUEST_ID_KEY = "x-request-id"
RETRY_AFTER_KEY = "retry-after"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

log = logging.getLogger("llmos.rpc")

STATUS_OF: dict[type[errors.LLMOSError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}


def status_of(error: errors.LLMOSError) -> grpc.StatusCode:
    """The gRPC status code for a domain error (most specific class wins)."""
    for cls in type(error).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.UNKNOWN


def relayed_error(error: grpc.aio.AioRpcError) -> errors.LLMOSError:
    """A downstream service's refusal as the domain error it stands for, so a proxy (the
    gateway) answers its caller with the same status and sentence."""
    code = error.code()
    for cls, mapped in STATUS_OF.items():
        if mapped == code and cls is not errors.InvalidArgument:
            return cls(error.details() or code.name)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field, _, reason = (error.details() or "request: invalid").partition(": ")
        return errors.InvalidArgument(field, reason)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return errors.Unavailable("the call ran out of time downstream; retry")
    return errors.Unavailable(f"a downstream service failed ({code.name}); retry later")


def request_id_from(metadata: Any) -> str:
    """The caller's request id if it is well-formed, else a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY and isinstance(value, str) and _REQUEST_ID_RE.match(value):
            return value
    return uuid.uuid4().hex


async def _abort_for(exc: BaseException, context: grpc.aio.ServicerContext, rid: str) -> None:
    """Answer the call with the status that `exc` stands for."""
    trailers: list[tuple[str, str]] = [(REQUEST_ID_KEY, rid)]
    if isinstance(exc, errors.LLMOSError):
        if isinstance(exc, errors.ResourceExhausted) and exc.retry_after_s is not None:
            trailers.append((RETRY_AFTER_KEY, f"{max(exc.retry_after_s, 0.0):.3f}"))
        await context.abort(status_of(exc), str(exc), tuple(trailers))
    log.error("unhandled error in RPC", exc_info=exc)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error (request id {rid})", tuple(trailers)
    )


class CallGuard(Protocol):
    """Policy run around every call of a server (the gateway's: authentication,
    authorization, rate limits, audit). `guard(method, context)` is entered before the
    request is parsed; errors it raises are answered like any domain error, and it sees
    every call's outcome as the exception (or none) leaving it."""

    def guard(
        self, method: str, context: grpc.aio.ServicerContext
    ) -> contextlib.AbstractAsyncContextManager[Any]: ...

    def admit(self, request: Any) -> Any:
        """The request as the handler should see it, once parsed (an internal server
        replaces its tenant by the asserted one)."""
        ...


def outcome_of(exc: BaseException | None) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with when `exc` leaves its handler, and the sentence."""
    if exc is None:
        return grpc.StatusCode.OK, ""
    if isinstance(exc, errors.LLMOSError):
        return status_of(exc), str(exc)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED, "the caller went away"
    if isinstance(exc, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN, "aborted"
    return grpc.StatusCode.INTERNAL, "internal error"


@contextlib.asynccontextmanager
async def _call_scope(
    context: grpc.aio.ServicerContext, method: str, guard: CallGuard | None
) -> AsyncIterator[None]:
    """Request id for the call's duration; any exception leaves as a gRPC status."""
    rid = request_id_from(context.invocation_metadata())
    token = request_id_var.set(rid)
    tracing.incoming.set(tracing.traceparent_in(context.invocation_metadata()))
    try:
        context.set_trailing_metadata(((REQUEST_ID_KEY, rid),))
        async with guard.guard(method, context) if guard else contextlib.nullcontext():
            yield
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await _abort_for(exc, context, rid)
    finally:
        # a stream closed at shutdown is finalized by the event loop in another context,
        # where the token cannot be reset (and the value does not matter any more)
        with contextlib.suppress(ValueError):
            request_id_var.reset(token)


Deserializer = Callable[[bytes], Any] | None


def _parse(raw: Any, deserializer: Deserializer, max_bytes: int | None = None) -> Any:
    """Deserialize here rather than in gRPC, so a bad request gets INVALID_ARGUMENT naming
    the field (gRPC itself would answer INTERNAL) ."""
    if deserializer is None:
        return raw
    if max_bytes is not None and len(raw) > max_bytes:
        raise errors.ResourceExhausted(
            f"request is {len(raw)} bytes; this server accepts at most {max_bytes}"
        )
    try:
        return deserializer(raw)
    except DecodeError:
        message_class = getattr(deserializer, "__self__", None)
        field = invalid_utf8_field(message_class.DESCRIPTOR, raw) if message_class else None
        if field:
            raise errors.InvalidArgument(field, "is not valid UTF-8") from None
        raise errors.InvalidArgument("request", "is not a valid protobuf message") from None


@dataclass(frozen=True)
class _Scope:
    method: str
    guard: CallGuard | None
    max_request_bytes: int | None


def _admitted(scope: _Scope, request: Any, streamed: bool) -> Any:
    """The parsed request (or request stream) as the guard admits it."""
    if scope.guard is None:
        return request
    admit = scope.guard.admit
    if not streamed:
        return admit(request)

    async def each() -> AsyncIterator[Any]:
        async for message in request:
            yield admit(message)

    return each()


def _wrap_unary_response(
    behavior: Callable[..., Awaitable[Any]], scope: _Scope, deserializer: Deserializer = None
) -> Callable[..., Awaitable[Any]]:
    """A unary request is parsed here (`deserializer`); a request stream (None) by gRPC."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _call_scope(context, scope.method, scope.guard):
            if deserializer is None:
                return await behavior(_admitted(scope, request, streamed=True), context)
            parsed = _parse(request, deserializer, scope.max_request_bytes)
            return await behavior(_admitted(scope, parsed, streamed=False), context)

    return handle


def _wrap_stream_response(
    behavior: Callable[..., Any], scope: _Scope, deserializer: Deserializer = None
) -> Callable[..., AsyncIterator[Any]]:
    """A unary request is parsed here (`deserializer`); a request stream (None) by gRPC."""

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async with _call_scope(context, scope.method, scope.guard):
            if deserializer is None:
                admitted = _admitted(scope, request, streamed=True)
            else:
                parsed = _parse(request, deserializer, scope.max_request_bytes)
                admitted = _admitted(scope, parsed, streamed=False)
            result = behavior(admitted, context)
            if inspect.isasyncgen(result):
                async for item in result:
                    yield item
            else:  # a handler that writes through context.write()
                await result

    return handle


class CallContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Request ids and error mapping for every RPC of a server, plus an optional guard
    (see CallGuard) and a limit on the size of a request message."""

    def __init__(
        self, guard: CallGuard | None = None, max_request_bytes: int | None = None
    ) -> None:
        self._guard = guard
        self._max_request_bytes = max_request_bytes

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        # unary requests arrive as bytes and are parsed by the wrapper (see _parse)
        raw = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        deserializer = handler.request_deserializer
        scope = _Scope(handler_call_details.method, self._guard, self._max_request_bytes)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, scope, deserializer), **raw
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, scope), **codec
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, scope, deserializer), **raw
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, scope), **codec
        )


def server_options(max_message_bytes: int = 64 * 1024 * 1024) -> list[tuple[str, Any]]:
    """Channel options every LLM OS server uses: bounded message sizes, keepalive."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.so_reuseport", 0),
    ]
