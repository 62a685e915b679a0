"""The HTTP ceiling of a restart storm: a bare aiohttp server answering a canned bulk body.

A second raw limit beside raw asyncpg for ``bench/consume.py``: the same storm
client against an aiohttp server in its own process that does nothing but
return 20 items shaped like a bulk read's (no auth, no database, no
decryption, no audit). What the daemon cannot beat on this machine with this
client: the figure a bulk read is held against.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.net import free_port

SERVER = r"""
import socket, sys
from aiohttp import web

items = [
    {
        "id": f"0d8f3a4e-5b6c-4d7e-8f9a-0b1c2d3e{i:04d}",
        "name": f"app000-s{i:02d}",
        "private": False,
        "owner": "admin",
        "version": 1,
        "created": "2026-12-03T17:00:00.123456+00:00",
        "updated": "2026-12-03T17:00:00.123456+00:00",
        "values": {"username": f"user{i}", "password": "p" * 24, "host": "db.internal"},
    }
    for i in range(int(sys.argv[2]))
]

async def bulk(request):
    return web.json_response({"items": items, "next_cursor": None})

app = web.Application()
app.router.add_get("/api/v1/secrets", bulk)
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=4096)
web.run_app(app, sock=listener, print=None, access_log=None, handle_signals=True)
"""


class BareServer:
    """The canned server as a subprocess on a free 127.0.0.1 port."""

    def __init__(self, items: int) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(self.port), str(items)],
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self._proc.pid

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the bare aiohttp server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)
