"""Listening: a port in use by another server is an error unless REUSE_PORT shares it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from ops.errors import CommandError
from ops.services import ServiceSet, run_services
from tests.conftest import free_port


def two_apps_on(port: int, reuse_port: bool) -> ServiceSet:
    services = ServiceSet(reuse_port=reuse_port)
    for name in ("first", "second"):
        app = web.Application()
        app.router.add_get("/name", answer_with(name))
        services.add_app(name, app, "127.0.0.1", port)
    return services


def answer_with(name: str):
    async def handle(_request: web.Request) -> web.Response:
        return web.Response(text=name)

    return handle


async def test_port_in_use_is_an_error():
    port = free_port()

    with pytest.raises(CommandError) as raised:
        await run_services(two_apps_on(port, reuse_port=False), handle_signals=False)

    assert str(raised.value) == (
        f"second failed to listen on host '127.0.0.1' port {port}: error while attempting to bind on address "
        f"('127.0.0.1', {port}): address already in use. Set HOST or --host to a local address or host name, "
        "and PORT or --port to a free port")


async def test_reuse_port_shares_the_port():
    port = free_port()
    stopping, ready = asyncio.Event(), asyncio.Event()
    running = asyncio.create_task(run_services(two_apps_on(port, reuse_port=True), stopping, ready,
                                               handle_signals=False))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/name") as response:
                status, name = response.status, await response.text()
    finally:
        stopping.set()
        await running

    assert status == 200
    assert name in ("first", "second")
