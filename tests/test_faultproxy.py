"""The TCP fault proxy: each mode, switched at run time, in the test's loop and in a thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.faultproxy import FaultProxy, HttpFaultProxy, ThreadedFaultProxy

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """An echo server in the test's loop."""
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def proxy(echo_port: int) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo_port) as started:
        yield started


@pytest.fixture
async def stream(proxy: FaultProxy) -> AsyncIterator[Stream]:
    """A client connection through the proxy."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    yield reader, writer
    writer.close()


async def _roundtrip(stream: Stream, payload: bytes = b"ping") -> bytes:
    reader, writer = stream
    writer.write(payload)
    await writer.drain()
    return await reader.readexactly(len(payload))


async def _timed_roundtrip(stream: Stream) -> float:
    started = time.monotonic()
    assert await _roundtrip(stream) == b"ping"
    return time.monotonic() - started


async def test_pass_forwards_both_ways(stream: Stream) -> None:
    """In pass mode bytes reach the upstream and its answer comes back."""
    assert await _roundtrip(stream, b"hello through the proxy") == b"hello through the proxy"


async def test_proxy_listens_on_loopback(proxy: FaultProxy) -> None:
    """The proxy binds 127.0.0.1 and a port of its own."""
    assert (proxy.host, proxy.url) == ("127.0.0.1", f"http://127.0.0.1:{proxy.port}")
    assert proxy.port > 0


async def test_latency_both_directions(proxy: FaultProxy, stream: Stream) -> None:
    """Latency on both directions delays a round trip twice."""
    await proxy.latency(0.15, "both")
    assert await _timed_roundtrip(stream) >= 0.3


async def test_latency_one_direction(proxy: FaultProxy, stream: Stream) -> None:
    """Latency on the answers alone delays a round trip once."""
    await proxy.latency(0.2, "downstream")
    assert await _timed_roundtrip(stream) >= 0.2


async def test_connect_latency(proxy: FaultProxy) -> None:
    """Connect latency delays the first exchange of each new connection."""
    await proxy.latency(0.2, "connect")
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        assert await _timed_roundtrip((reader, writer)) >= 0.2
    finally:
        writer.close()


async def test_pass_through_clears_latency(proxy: FaultProxy, stream: Stream) -> None:
    """Switching back to pass removes the added latency."""
    await proxy.latency(5, "both")
    await proxy.pass_through()
    assert await asyncio.wait_for(_roundtrip(stream), 2) == b"ping"


async def test_blackhole_accepts_but_never_answers(proxy: FaultProxy) -> None:
    """A blackholed proxy accepts a connection and then stays silent."""
    await proxy.blackhole()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(_roundtrip((reader, writer)), 0.3)
    finally:
        writer.close()


async def test_blackhole_holds_bytes_until_pass(proxy: FaultProxy, stream: Stream) -> None:
    """Bytes sent into a blackhole are delivered once the proxy passes again, like TCP."""
    await proxy.blackhole()
    pending = asyncio.create_task(_roundtrip(stream))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done
    await proxy.pass_through()
    assert await asyncio.wait_for(pending, 5) == b"ping"


async def test_reset_breaks_open_connections(proxy: FaultProxy, stream: Stream) -> None:
    """Reset sends an RST on an open connection."""
    assert await _roundtrip(stream) == b"ping"
    await proxy.reset()
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(_roundtrip(stream), 5)


async def test_reset_applies_to_new_connections(proxy: FaultProxy) -> None:
    """In reset mode a new connection is reset as soon as it is accepted."""
    await proxy.reset()
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(_roundtrip((reader, writer)), 5)
    finally:
        writer.close()


async def test_down_refuses_connections(proxy: FaultProxy) -> None:
    """A proxy that is down refuses new connections."""
    await proxy.down()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)


async def test_up_again_on_the_same_port(proxy: FaultProxy) -> None:
    """After down, pass listens again on the same port."""
    port = proxy.port
    await proxy.down()
    await proxy.pass_through()
    reader, writer = await asyncio.open_connection(proxy.host, port)
    try:
        assert await _roundtrip((reader, writer)) == b"ping"
    finally:
        writer.close()


async def test_unreachable_upstream_closes_the_client() -> None:
    """When the upstream refuses, the client's connection is closed instead of hanging."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    async with FaultProxy("127.0.0.1", closed_port) as proxy:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        try:
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                await asyncio.wait_for(_roundtrip((reader, writer)), 5)
        finally:
            writer.close()


async def test_stop_closes_the_listener(echo_port: int) -> None:
    """A stopped proxy no longer accepts connections."""
    proxy = await FaultProxy("127.0.0.1", echo_port).start()
    await proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # the proxy resets connections on purpose
            while data := self.request.recv(65536):
                self.request.sendall(data)


@pytest.fixture
def threaded_echo_port() -> Iterator[int]:
    """An echo server in a thread, for tests without a running event loop."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(10)


def _blocking_roundtrip(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"ping")
        return sock.recv(4)


def test_threaded_proxy_serves_blocking_clients(threaded_echo_port: int) -> None:
    """The threaded proxy forwards for a client with no event loop of its own."""
    with ThreadedFaultProxy("127.0.0.1", threaded_echo_port) as proxy:
        assert _blocking_roundtrip(proxy.port) == b"ping"


def test_threaded_proxy_switches_modes(threaded_echo_port: int) -> None:
    """Modes of the threaded proxy switch from the calling thread."""
    with ThreadedFaultProxy("127.0.0.1", threaded_echo_port) as proxy:
        proxy.down()
        with pytest.raises(ConnectionRefusedError):
            _blocking_roundtrip(proxy.port)
        proxy.pass_through()
        assert _blocking_roundtrip(proxy.port) == b"ping"


# -- the HTTP fault proxy -------------------------------------------------------------------


async def _echo_request(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {"method": request.method, "path": request.path_qs, "body": body.decode()},
        headers={"X-Upstream": "yes"},
    )


@pytest.fixture
async def http_upstream() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo_request)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_http_proxy_forwards_and_answers_for_the_upstream(http_upstream: str) -> None:
    """Requests pass unchanged; a matching rule answers instead, as often as it is told."""
    async with HttpFaultProxy(http_upstream) as proxy, aiohttp.ClientSession() as session:
        async with session.post(f"{proxy.url}/a?b=1", data=b"hello") as response:
            assert response.headers["X-Upstream"] == "yes"
            assert await response.json() == {"method": "POST", "path": "/a?b=1", "body": "hello"}
        proxy.answer(
            429, b'{"errors": []}', {"Retry-After": "2"}, when=lambda m, p, h: m == "PUT", count=1
        )
        async with session.get(f"{proxy.url}/x") as response:
            assert response.status == 200
        async with session.put(f"{proxy.url}/x") as response:
            assert (response.status, response.headers["Retry-After"]) == (429, "2")
            assert await response.read() == b'{"errors": []}'
        async with session.put(f"{proxy.url}/x") as response:
            assert response.status == 200
        proxy.answer(503, b"down")
        async with session.get(f"{proxy.url}/y") as response:
            assert response.status == 503
        proxy.clear()
        async with session.get(f"{proxy.url}/y") as response:
            assert response.status == 200
        assert proxy.answered == 2
