"""The HTTP ceiling of a restart storm: a bare aiohttp server answering a canned bulk body."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

from aiohttp import web
from tests.net import LineServer


class BareServer(LineServer):
    """The canned server (``python -m bench.http_ceiling ITEMS``) on a 127.0.0.1 port."""

    def __init__(self, items: int) -> None:
        super().__init__("bench.http_ceiling", str(items))
        self.base_url = f"http://127.0.0.1:{self.first_line}"


def serve(count: int) -> None:
    """Print the port, serve until stdin closes."""
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
        for i in range(count)
    ]

    async def bulk(_request: web.Request) -> web.Response:
        return web.json_response({"items": items, "next_cursor": None})

    def end_with_stdin() -> None:
        sys.stdin.read()
        os.kill(os.getpid(), signal.SIGTERM)

    app = web.Application()
    app.router.add_get("/api/v1/secrets", bulk)
    listener = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(listener.getsockname()[1], flush=True)
    threading.Thread(target=end_with_stdin, daemon=True).start()
    web.run_app(app, sock=listener, print=None, access_log=None, handle_signals=True)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
