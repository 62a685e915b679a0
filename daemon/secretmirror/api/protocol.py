"""The HTTP connection handler: read deadlines, and parser errors as JSON, never echoed.

aiohttp's own handler has neither a header nor a body read deadline: a client
holding a half-sent request keeps its connection (and a file descriptor) for
as long as it likes. Here the headers of a request must be complete within
``HEADER_TIMEOUT_S`` of its first byte (of the connection, for the first one),
else the connection is closed; a body must be read within ``BODY_TIMEOUT_S``
(``routes.json_body``).

A request the HTTP parser rejects (a bad header line, a bad method) was
answered in ``text/plain`` and logged by ``aiohttp.server`` with the offending
line, which can be ``Authorization: Bearer smt_...``. ``handle_error`` answers
the documented JSON error shape and logs only the status and the error's type.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = structlog.get_logger("secretmirror.api")

HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 60.0

_CODES = {400: "bad_request", 413: "too_large", 431: "headers_too_large", 501: "not_implemented"}


class HardenedHandler(RequestHandler):
    """aiohttp's ``RequestHandler`` with a header deadline and quiet JSON parser errors."""

    header_timeout_s = HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._between_requests = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._between_requests:
            # The first bytes of the next request on a kept-alive connection start its clock.
            self._between_requests = False
            self._arm()
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # a request's headers are in (or the parser refused them)

    async def _handle_request(self, request: BaseRequest, *args: Any) -> Any:
        try:
            return await super()._handle_request(request, *args)
        finally:
            self._between_requests = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = asyncio.get_running_loop().call_later(
            self.header_timeout_s, self._headers_late
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        peer = self.transport.get_extra_info("peername") if self.transport else None
        log.info("http.header_timeout", remote=peer[0] if peer else None)
        self.force_close()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Never the exception's text: the parser's message quotes the raw request line.
        log.warning(
            "http.protocol_error",
            status=status,
            error=type(exc).__name__ if exc else None,
            remote=request.remote,
        )
        if request.writer.output_size > 0:
            raise ConnectionError("the response was partly sent; the connection is closed")
        if status >= 500:
            code, text = "internal", "an internal error occurred"
        else:
            code, text = _CODES.get(status, "bad_request"), "the request is malformed HTTP"
        response = web.json_response({"error": {"code": code, "message": text}}, status=status)
        response.force_close()
        return response


class HardenedServer(web.Server):
    """A ``web.Server`` whose connections use ``HardenedHandler``."""

    def __call__(self) -> RequestHandler:
        return HardenedHandler(self, loop=self._loop, **self._kwargs)


class HardenedRunner(web.AppRunner):
    """``web.AppRunner`` serving through ``HardenedServer``."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = HardenedServer  # same state, our connection handler
        return server
