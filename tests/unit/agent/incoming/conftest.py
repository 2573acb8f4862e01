"""Fixtures of the HTTP router tests: an "original" and a "local" server per protocol, and a
router in front of them (requests with `x-dev: alice` go to the local one)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

import pytest

from tests.unit.agent.incoming.http_peers import (
    H1Server,
    H2Server,
    Router,
    alice_filter,
    filters_decide,
)

MakeRouter = Callable[[dict[Hashable, int]], Awaitable[Router]]


@pytest.fixture
async def make_router() -> AsyncIterator[MakeRouter]:
    """Start routers: make_router(ports), routing `x-dev: alice` requests to "local"."""
    routers: list[Router] = []

    async def make(ports: dict[Hashable, int]) -> Router:
        router = Router(filters_decide([("local", alice_filter())]), ports)
        await router.start()
        routers.append(router)
        return router

    yield make
    for router in routers:
        await router.close()


@pytest.fixture
async def h1_original() -> AsyncIterator[H1Server]:
    server = H1Server("original")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def h1_local() -> AsyncIterator[H1Server]:
    server = H1Server("local")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def h1_router(h1_original: H1Server, h1_local: H1Server, make_router: MakeRouter) -> Router:
    return await make_router({None: h1_original.port, "local": h1_local.port})


@pytest.fixture
async def h2_original() -> AsyncIterator[H2Server]:
    server = H2Server("original")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def h2_local() -> AsyncIterator[H2Server]:
    server = H2Server("local")
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def h2_router(h2_original: H2Server, h2_local: H2Server, make_router: MakeRouter) -> Router:
    return await make_router({None: h2_original.port, "local": h2_local.port})
