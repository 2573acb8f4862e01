"""gRPC through the HTTP/2 router end to end: real grpcio servers (the original app and the
local app) and a real grpcio client; calls with `x-dev: alice` metadata reach the local
server. Streaming, status trailers and large messages are tested on the core's frames, in
test_http2_core."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.unit.agent.incoming.conftest import MakeRouter
from tests.unit.agent.incoming.http_peers import LOOPBACK, Router, closed_port

ALICE = (("x-dev", "alice"),)
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
# No proxy from the environment: traffic stays on loopback.
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


@dataclass
class GrpcServer:
    name: str
    port: int
    server: grpc.Server
    executor: ThreadPoolExecutor

    def stop(self) -> None:
        self.server.stop(None).wait(5)
        self.executor.shutdown(wait=True)  # grpc does not stop the threads it was given


def start_grpc_server(name: str) -> GrpcServer:
    """A server of service test.Svc, whose Unary answers "<name>:<request>"."""

    def unary(request: bytes, context: Any) -> bytes:
        return name.encode() + b":" + request

    handler = grpc.method_handlers_generic_handler(
        "test.Svc", {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
    )
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"grpc-{name}")
    server = grpc.server(executor, options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port(f"{LOOPBACK}:0")
    server.start()
    return GrpcServer(name, port, server, executor)


@pytest.fixture
def grpc_servers() -> Iterator[tuple[GrpcServer, GrpcServer]]:
    original, local = start_grpc_server("original"), start_grpc_server("local")
    yield original, local
    for s in (original, local):
        s.stop()


@pytest.fixture
async def grpc_router(
    grpc_servers: tuple[GrpcServer, GrpcServer], make_router: MakeRouter
) -> Router:
    original, local = grpc_servers
    return await make_router({None: original.port, "local": local.port})


@pytest.fixture
async def channel(grpc_router: Router) -> AsyncIterator[grpc.Channel]:
    chan = grpc.insecure_channel(f"{LOOPBACK}:{grpc_router.port}", options=CHANNEL_OPTIONS)
    yield chan
    await asyncio.to_thread(chan.close)


def unary(chan: grpc.Channel, request: bytes, metadata: Any = ()) -> bytes:
    call = chan.unary_unary("/test.Svc/Unary")
    result: bytes = call(request, metadata=metadata, timeout=10)
    return result


async def test_calls_routed_by_metadata(channel: grpc.Channel, grpc_router: Router) -> None:
    calls = [(b"r%d" % i, ALICE if i % 2 else ()) for i in range(10)]
    results = await asyncio.gather(
        *(asyncio.to_thread(unary, channel, req, md) for req, md in calls)
    )
    for (req, md), result in zip(calls, results, strict=True):
        assert result == (b"local:" if md else b"original:") + req
    assert grpc_router.connects == {None: 1, "local": 1}


async def test_local_server_down_gives_unavailable(
    grpc_servers: tuple[GrpcServer, GrpcServer], make_router: MakeRouter
) -> None:
    original, _ = grpc_servers
    router = await make_router({None: original.port, "local": await closed_port()})
    chan = grpc.insecure_channel(f"{LOOPBACK}:{router.port}", options=CHANNEL_OPTIONS)
    try:
        with pytest.raises(grpc.RpcError) as info:
            await asyncio.to_thread(unary, chan, b"x", ALICE)
        error: Any = info.value
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert "the local app on the developer's machine did not answer" in error.details()
        # Calls without the metadata still work on the same channel.
        assert await asyncio.to_thread(unary, chan, b"y") == b"original:y"
    finally:
        await asyncio.to_thread(chan.close)
