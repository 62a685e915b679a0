"""A TCP fault proxy for tests: 127.0.0.1:<free port> in front of an upstream host:port.

Modes, switchable while connections are open:

- ``pass_through()``: forward both ways.
- ``latency(seconds, direction)``: delay every chunk going ``"upstream"``,
  ``"downstream"`` or ``"both"``; ``"connect"`` delays dialing the upstream
  once per new connection.
- ``blackhole()``: accept, never forward. Like a partition under TCP, bytes
  are held rather than lost: existing connections stall, new ones connect but
  get no answer, and everything held flows again after ``pass_through()``.
- ``reset()``: RST every open connection and every new one.
- ``down()``: close the listener (connections are refused) and RST every open
  connection; any other mode listens again on the same port.

``FaultProxy`` is the asyncio object, used inside the test's event loop.
``ThreadedFaultProxy`` runs one in a thread of its own with a blocking API,
for tests whose client is synchronous or a subprocess (a daemon pointed at
``proxy.url``). Both are context managers that stop what they started.

``HttpFaultProxy`` works one layer up, in front of an HTTP server (moto,
OpenBao): it forwards every request unchanged, except those an ``answer(...)``
rule matches, which get the rule's status, body and headers instead, as the
real provider would send them (the caller writes the provider's documented
error answer; the proxy only delivers it).

``ProxyProcess`` runs a ``FaultProxy`` in a process of its own (``python -m tests.faultproxy
UPSTREAM_PORT``, driven over stdin), so its CPU is not the caller's: the
benchmarks' load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import threading
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, TypeVar

import aiohttp
from aiohttp import web

from tests.net import LineServer

Direction = Literal["upstream", "downstream", "both", "connect"]
T = TypeVar("T")
_CHUNK = 65536


@dataclass(eq=False)  # identity: connections live in a set
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def abort(self) -> None:
        """Close both sides with a TCP RST (SO_LINGER 0), not an orderly FIN."""
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()


class FaultProxy:
    """The proxy inside the running event loop."""

    def __init__(self, upstream_host: str, upstream_port: int, port: int = 0) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.host = "127.0.0.1"
        self.port = port
        self.mode = "pass"
        self._latency: dict[str, float] = {}
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        await self._listen()
        return self

    async def stop(self) -> None:
        self.mode = "down"
        self._flowing.set()
        await self._close_listener()
        tasks = [*self._handlers, *(t for c in self._connections for t in c.tasks)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._connections.clear()

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- modes --

    async def pass_through(self) -> None:
        await self._set("pass")

    async def latency(self, seconds: float, direction: Direction = "both") -> None:
        """Add ``seconds`` in ``direction``; other directions keep their latency."""
        names = ["upstream", "downstream"] if direction == "both" else [direction]
        for name in names:
            self._latency[name] = seconds
        await self._set("latency")

    async def blackhole(self) -> None:
        await self._set("blackhole")

    async def reset(self) -> None:
        await self._set("reset")
        self._abort_all()

    async def down(self) -> None:
        await self._set("down")
        await self._close_listener()

    async def _set(self, mode: str) -> None:
        if mode != "latency":
            self._latency.clear()
        self.mode = mode
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode != "down" and self._server is None:
            await self._listen()

    # -- plumbing --

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        """Stop listening and RST open connections (``wait_closed`` waits for them)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._abort_all()
        if server is not None:
            await server.wait_closed()

    def _abort_all(self) -> None:
        for connection in list(self._connections):
            connection.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        self._connections.add(connection)
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        try:
            await self._flowing.wait()
            if self.mode in ("reset", "down"):
                connection.abort()
                return
            if self._latency.get("connect"):
                await asyncio.sleep(self._latency["connect"])
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
            except OSError:
                connection.abort()
                return
            connection.upstream = up_writer
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer, "upstream")),
                asyncio.create_task(self._pump(up_reader, writer, "downstream")),
            }
            connection.tasks |= pumps
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._connections.discard(connection)
            if handler is not None:
                self._handlers.discard(handler)
            for task in connection.tasks:
                task.cancel()
            for side in (connection.client, connection.upstream):
                if side is not None:
                    side.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                delay = self._latency.get(direction, 0.0)
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()


class ThreadedFaultProxy:
    """A ``FaultProxy`` on an event loop in its own thread, driven by blocking calls."""

    def __init__(self, upstream_host: str, upstream_port: int, timeout_s: float = 10.0) -> None:
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._upstream = (upstream_host, upstream_port)
        self._proxy: FaultProxy | None = None

    def start(self) -> ThreadedFaultProxy:
        self._thread.start()
        self._proxy = self._run(self._make())
        return self

    async def _make(self) -> FaultProxy:
        return await FaultProxy(*self._upstream).start()

    def stop(self) -> None:
        if self._proxy is not None:
            self._run(self._proxy.stop())
            self._proxy = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(self._timeout_s)
        self._loop.close()

    def __enter__(self) -> ThreadedFaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def proxy(self) -> FaultProxy:
        assert self._proxy is not None, "start() the proxy first"
        return self._proxy

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def url(self) -> str:
        return self.proxy.url

    def pass_through(self) -> None:
        self._run(self.proxy.pass_through())

    def latency(self, seconds: float, direction: Direction = "both") -> None:
        self._run(self.proxy.latency(seconds, direction))

    def blackhole(self) -> None:
        self._run(self.proxy.blackhole())

    def reset(self) -> None:
        self._run(self.proxy.reset())

    def down(self) -> None:
        self._run(self.proxy.down())

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout_s)


#: Matches a request by method, path and headers.
Match = Callable[[str, str, Mapping[str, str]], bool]
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "content-length",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)


@dataclass
class _Rule:
    status: int
    body: bytes
    headers: dict[str, str]
    when: Match | None
    #: Answers left; None: until ``clear()``.
    left: int | None

    def takes(self, method: str, path: str, headers: Mapping[str, str]) -> bool:
        if self.left == 0 or (self.when is not None and not self.when(method, path, headers)):
            return False
        if self.left is not None:
            self.left -= 1
        return True


class HttpFaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream`` that answers for it on demand."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        #: Requests answered by a rule rather than the upstream.
        self.answered = 0
        self._rules: list[_Rule] = []
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> HttpFaultProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> HttpFaultProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def answer(
        self,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        when: Match | None = None,
        count: int | None = None,
    ) -> None:
        """Answer requests ``when`` matches (all by default), ``count`` times or until cleared."""
        self._rules.append(_Rule(status, body, dict(headers or {}), when, count))

    def clear(self) -> None:
        self._rules.clear()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        for rule in self._rules:
            if rule.takes(request.method, request.path, request.headers):
                self.answered += 1
                return web.Response(status=rule.status, body=rule.body, headers=rule.headers)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            back = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            return web.Response(status=upstream.status, body=data, headers=back)


class ProxyProcess(LineServer):
    """A ``FaultProxy`` on 127.0.0.1 in front of ``upstream_port``, in a subprocess."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__("tests.faultproxy", str(upstream_port))
        if not self.first_line.isdigit():
            self.stop()
            raise RuntimeError("the fault proxy did not start")
        self.url = f"http://127.0.0.1:{self.first_line}"

    def _command(self, line: str) -> None:
        if self.command(line) != "ok":
            raise RuntimeError(f"the fault proxy refused {line!r}")

    def latency(self, seconds: float, direction: Direction = "both") -> None:
        self._command(f"latency {seconds} {direction}")

    def pass_through(self) -> None:
        self._command("pass")


async def _serve(upstream_port: int) -> None:
    """``ProxyProcess``'s side: print the port, then obey one command per stdin line."""
    proxy = await FaultProxy("127.0.0.1", upstream_port).start()
    print(proxy.port, flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        words = line.split()
        if words[0] == "latency":
            await proxy.latency(float(words[1]), words[2])
        else:
            await proxy.pass_through()
        print("ok", flush=True)
    await proxy.stop()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
