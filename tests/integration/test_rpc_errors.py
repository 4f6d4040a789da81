"""Every server answers domain errors with the right status and a sentence, and never
leaks a stack trace; each call carries a request id."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from llmos import errors
from llmos.rpc import REQUEST_ID_KEY, RETRY_AFTER_KEY, CallContextInterceptor

SERVICE = "test.Errors"


def _raise(kind: str) -> None:
    if kind == "invalid":
        raise errors.InvalidArgument("max_tokens", "must be greater than 0")
    if kind == "exhausted":
        raise errors.ResourceExhausted("rate limit of 10 requests/minute reached", 7.5)
    if kind == "notfound":
        raise errors.NotFound("model 'nope' does not exist")
    if kind == "bug":
        raise RuntimeError("secret internals at 0xdeadbeef")


async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    _raise(request.decode())
    return b"ok"


async def streaming(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    _raise(request.decode())
    yield b"second"


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[CallContextInterceptor()])
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(streaming),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
            yield chan
    finally:
        await server.stop(0)


async def _call(channel: grpc.aio.Channel, kind: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary(f"/{SERVICE}/Unary")(kind.encode(), timeout=5)
    return caught.value


@pytest.mark.parametrize(
    ("kind", "code", "sentence"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "max_tokens: must be greater than 0"),
        ("exhausted", grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit of 10 requests/minute"),
        ("notfound", grpc.StatusCode.NOT_FOUND, "model 'nope' does not exist"),
    ],
)
async def test_domain_errors_map_to_their_status(
    channel: grpc.aio.Channel, kind: str, code: grpc.StatusCode, sentence: str
) -> None:
    error = await _call(channel, kind)
    assert error.code() == code
    assert sentence in (error.details() or "")


async def test_resource_exhausted_carries_retry_after(channel: grpc.aio.Channel) -> None:
    error = await _call(channel, "exhausted")
    trailers = dict(error.trailing_metadata() or ())
    assert float(trailers[RETRY_AFTER_KEY]) == pytest.approx(7.5)


async def test_unexpected_error_is_internal_without_internals(channel: grpc.aio.Channel) -> None:
    error = await _call(channel, "bug")
    assert error.code() == grpc.StatusCode.INTERNAL
    details = error.details() or ""
    assert "deadbeef" not in details and "Traceback" not in details
    request_id = dict(error.trailing_metadata() or ())[REQUEST_ID_KEY]
    assert request_id in details  # the operator can find the logged traceback by it


async def test_callers_request_id_is_kept(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")(b"fine", metadata=((REQUEST_ID_KEY, "req-42"),))
    assert await call == b"ok"
    assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] == "req-42"


async def test_malformed_request_id_is_replaced(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary(f"/{SERVICE}/Unary")(
        b"fine", metadata=((REQUEST_ID_KEY, "x" * 500),)
    )
    await call
    assert dict(await call.trailing_metadata())[REQUEST_ID_KEY] != "x" * 500


async def test_stream_error_after_first_message_keeps_the_status(
    channel: grpc.aio.Channel,
) -> None:
    call = channel.unary_stream(f"/{SERVICE}/Stream")(b"invalid", timeout=5)
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for item in call:
            received.append(item)
    assert received == [b"first"]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_truncated_message_is_invalid_argument_not_internal() -> None:
    """A malformed payload is the caller's fault: INVALID_ARGUMENT, never INTERNAL."""
    from llmos.rpc import _parse
    from llmos.v1 import gateway_pb2

    good = gateway_pb2.GenerateRequest(prompt="PLACEHOLDER").SerializeToString()
    with pytest.raises(errors.InvalidArgument) as caught:
        _parse(good[:-3], gateway_pb2.GenerateRequest.FromString)
    assert caught.value.field == "request"
    with pytest.raises(errors.InvalidArgument) as caught:
        _parse(
            good.replace(b"PLACEHOLDER", b"caf\xe9 \xff\xfe!!!!"),
            gateway_pb2.GenerateRequest.FromString,
        )
    assert caught.value.field == "prompt"
