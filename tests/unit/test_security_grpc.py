"""The gRPC guard interceptor on a real in-process grpc.aio server (raw-bytes methods)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from fraudserve.errors import RateLimited
from fraudserve.security import Guards
from fraudserve.security.auth import KeyStore
from fraudserve.security.grpc_auth import GuardInterceptor, check_message, peer_address
from fraudserve.security.ratelimit import TokenBucketLimiter

pytestmark = pytest.mark.anyio

KEY = "g" * 24
ADMIN_KEY = "h" * 24
OPEN = "/inference.GRPCInferenceService/ServerLive"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def chat(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request.upper()


async def metered(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """Spends a token per message like the OIP stream, and answers a refused one without ending."""
    async for request in requests:
        try:
            check_message()
        except RateLimited:
            yield b"RESOURCE_EXHAUSTED"
            continue
        yield request.upper()


def handlers() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Say": grpc.unary_unary_rpc_method_handler(echo),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Metered": grpc.stream_stream_rpc_method_handler(metered),
        },
    )


def live() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ServerLive": grpc.unary_unary_rpc_method_handler(echo)}
    )


async def serve(guards: Guards) -> tuple[grpc.aio.Server, grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[GuardInterceptor(guards)])
    server.add_generic_rpc_handlers((handlers(), live()))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, grpc.aio.insecure_channel(f"127.0.0.1:{port}")


def auth(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_keys_are_checked_on_unary_and_streaming_calls_but_not_on_probes() -> None:
    server, channel = await serve(Guards(keys=KeyStore([KEY], [ADMIN_KEY]), limiter=None))
    try:
        say = channel.unary_unary("/test.Echo/Say")
        assert await code_of(say(b"hi")) is grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(say(b"hi", metadata=auth("wrong" * 5))) is grpc.StatusCode.UNAUTHENTICATED
        assert await say(b"hi", metadata=auth(KEY)) == b"hi"
        assert await say(b"hi", metadata=auth(ADMIN_KEY)) == b"hi"
        assert await channel.unary_unary(OPEN)(b"live") == b"live"

        chat_call = channel.stream_stream("/test.Echo/Chat")
        # No requests are sent: the refusal ends the call before the server reads any.
        refused = chat_call()
        assert await refused.code() is grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in (await refused.details() or "")
        accepted = chat_call(iter([b"a", b"b"]), metadata=auth(KEY))
        assert [reply async for reply in accepted] == [b"A", b"B"]
    finally:
        await channel.close()
        await server.stop(0)


async def test_rate_limit_is_resource_exhausted_with_retry_after() -> None:
    server, channel = await serve(Guards(keys=KeyStore(), limiter=TokenBucketLimiter(0.5, 2)))
    try:
        say = channel.unary_unary("/test.Echo/Say")
        assert await say(b"1") == b"1" and await say(b"2") == b"2"
        call = say(b"3")
        assert await code_of(call) is grpc.StatusCode.RESOURCE_EXHAUSTED
        trailing = dict(await call.trailing_metadata() or ())
        assert int(trailing["retry-after"]) >= 1
        stream = channel.stream_stream("/test.Echo/Chat")()
        assert await stream.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert await channel.unary_unary(OPEN)(b"live") == b"live"  # probes spend no tokens
    finally:
        await channel.close()
        await server.stop(0)


async def test_every_stream_message_spends_a_token_of_the_same_bucket() -> None:
    server, channel = await serve(Guards(keys=KeyStore([KEY]), limiter=TokenBucketLimiter(0.01, 4)))
    try:
        metered_call = channel.stream_stream("/test.Echo/Metered")
        # Opening costs one token, each message one: 3 of the 5 messages fit a burst of 4.
        replies = [r async for r in metered_call(iter([b"a", b"b", b"c", b"d", b"e"]), metadata=auth(KEY))]
        assert replies == [b"A", b"B", b"C", b"RESOURCE_EXHAUSTED", b"RESOURCE_EXHAUSTED"]
        # The same client's unary calls share the now empty bucket.
        say = channel.unary_unary("/test.Echo/Say")
        assert await code_of(say(b"x", metadata=auth(KEY))) is grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await channel.close()
        await server.stop(0)


async def test_check_message_is_a_no_op_without_a_limiter() -> None:
    server, channel = await serve(Guards(keys=KeyStore(), limiter=None))
    try:
        replies = [r async for r in channel.stream_stream("/test.Echo/Metered")(iter([b"a"] * 100))]
        assert replies == [b"A"] * 100
        check_message()  # outside any call
    finally:
        await channel.close()
        await server.stop(0)


@pytest.mark.parametrize(
    ("peer", "address"),
    [("ipv4:127.0.0.1:5000", "127.0.0.1"), ("ipv6:[::1]:5000", "::1"), ("unix:/tmp/s.sock", "/tmp/s.sock")],
)
async def test_peer_address(peer: str, address: str) -> None:
    assert peer_address(peer) == address
