"""The aiohttp application: middlewares (errors, metrics, request ids) and wiring."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from secretmirror import metrics
from secretmirror.api import admin, audit_routes, auditing, routes
from secretmirror.api.keys import ACCOUNTS, HEALTH, RUNTIME, SERVICE
from secretmirror.api.openapi import openapi_document
from secretmirror.audit import AuditLog
from secretmirror.auth import Accounts
from secretmirror.errors import RequestTimeout, SecretMirrorError, TooLarge, TooManyRequests
from secretmirror.runtime import Runtime
from secretmirror.service import SecretService

log = structlog.get_logger("secretmirror.api")

MAX_BODY = 1024 * 1024
#: Methods kept as metric labels; any other token a client sends counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes the documented error JSON; a 5xx never carries a traceback."""
    request_id = _request_id(request.headers.get("X-Request-Id"))
    request[auditing.REQUEST_ID] = request_id
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    route = _route_template(request)
    try:
        response = await handler(request)
    except SecretMirrorError as exc:
        if exc.status >= 500:
            log.warning("http.unavailable", route=route, code=exc.code, message=exc.message)
        response = error_response(exc.status, exc.code, exc.message)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        if isinstance(exc, RequestTimeout):
            response.force_close()
    except web.HTTPRequestEntityTooLarge:
        exc_large = TooLarge("the request body exceeds 1 MiB")
        response = error_response(413, exc_large.code, exc_large.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        response = error_response(exc.status, code, exc.reason)
        if "Allow" in exc.headers:  # a 405 must say which methods exist (RFC 9110)
            response.headers["Allow"] = exc.headers["Allow"]
    except Exception:
        log.exception("http.internal_error", route=route)
        response = error_response(500, "internal", "an internal error occurred")
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-Id"] = request_id
    method = request.method if request.method in _METHODS else "other"
    metrics.http_requests.labels(route, method, str(response.status)).inc()
    metrics.http_request_duration.labels(route, method).observe(time.perf_counter() - started)
    return response


def _request_id(sent: str | None) -> str:
    """The client's X-Request-Id when it is a plain short id, else a fresh one (it goes
    into logs and the audit log, so it must not carry arbitrary text)."""
    if sent and len(sent) <= 64 and sent.isascii() and sent.replace("-", "").isalnum():
        return sent
    return uuid.uuid4().hex[:16]


def _route_template(request: web.Request) -> str:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return "unmatched"
    return info.route.resource.canonical


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    reasons = await request.app[HEALTH]()
    if reasons:
        return web.json_response({"status": "unavailable", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})


async def metrics_handler(request: web.Request) -> web.Response:
    collect = request.app.get(admin.SHARED_GAUGES)
    if collect is not None:
        await collect()
    body = generate_latest(metrics.REGISTRY)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    # The stores a reconcile job may name are this deployment's (primary, backup, mirrors).
    return web.json_response(openapi_document(tuple(r.role for r in request.app[RUNTIME].stores)))


def build_app(
    runtime: Runtime,
    service: SecretService,
    accounts: Accounts,
    health: Callable[[], Awaitable[list[str]]],
) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auditing.audit_middleware], client_max_size=MAX_BODY
    )
    audit_settings = runtime.settings.audit
    app[auditing.AUDIT] = AuditLog(runtime.pool, audit_settings.file, audit_settings.enabled)
    app.on_cleanup.append(lambda _app: _app[auditing.AUDIT].close())
    app[RUNTIME] = runtime
    app[SERVICE] = service
    app[ACCOUNTS] = accounts
    app[HEALTH] = health
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/api/v1/openapi.json", openapi)
    routes.add_routes(app)
    admin.add_routes(app)
    audit_routes.add_routes(app)
    return app
