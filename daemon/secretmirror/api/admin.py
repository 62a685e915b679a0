"""``/admin/v1``: status and dead letters (admin only)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from secretmirror import audit, deliveries
from secretmirror.api.keys import RUNTIME
from secretmirror.api.routes import check_query, principal_of
from secretmirror.errors import Forbidden
from secretmirror.mirrors import Mirror
from secretmirror.model import Principal
from secretmirror.queries import Q
from secretmirror.runtime import Runtime

#: Refreshes the gauges read from PostgreSQL before a scrape (set by the daemon).
SHARED_GAUGES: web.AppKey[Callable[[], Awaitable[None]]] = web.AppKey("shared_gauges")
#: Extra status fields (``last_verify``) provided by the reconcile module.
LAST_VERIFY: web.AppKey[Callable[[], Awaitable[Any]]] = web.AppKey("last_verify")


async def admin_of(request: web.Request, *params: str) -> Principal:
    """The admin making the request; 400 for a query parameter the route does not take."""
    principal = await principal_of(request)
    if principal.scoped:
        raise Forbidden("a scoped token cannot use the admin routes")
    if not principal.is_admin:
        raise Forbidden("only an admin can do this")
    check_query(request, *params)
    return principal


_USERINFO = re.compile(r"://[^/@\s]*@")
_SECRET_PARAM = re.compile(r"(?i)\b(password|passwd|token|secret|key)=[^&;\s]*")


def redact_location(location: str) -> str:
    """A location for people: no ``user:password@`` in a URL, no ``password=`` parameter."""
    return _SECRET_PARAM.sub(r"\1=***", _USERINFO.sub("://***@", location))


def mirror_json(rule: Mirror) -> dict[str, Any]:
    """A mirror's rule as configured (``stores.<name>.mirror`` in status)."""
    return {
        "include": list(rule.include),
        "exclude": list(rule.exclude),
        "include_private": rule.include_private,
        "naming": "name" if rule.by_name else "id",
        "on_delete": "retain" if rule.retain else "delete",
    }


async def status_json(rt: Runtime, last_verify: Any = None) -> dict[str, Any]:
    """Every store (primary, backup, each mirror by its name) and, per target, its
    deliveries; ``dead_reasons`` counts the dead ones by the reason of their last error
    (``foreign_entry``: an entry at the target's name is not this deployment's)."""
    stores: dict[str, Any] = {}
    for role in rt.stores:
        stores[role.role] = {
            "type": role.type,
            "location": redact_location(role.location),
            "up": role.up,
            "last_error": role.last_error,
        }
        rule = rt.rules.get(role.role)
        if rule is not None:
            stores[role.role]["mirror"] = mirror_json(rule)
    targets = rt.target_keys
    per_target = await deliveries.status(rt.pool, targets)
    reasons = await deliveries.dead_reasons(rt.pool, targets)
    return {
        "deployment_id": rt.deployment_id,
        "stores": stores,
        "replication": {
            t: {**s.to_json(), "dead_reasons": reasons[t]} for t, s in per_target.items()
        },
        "last_verify": last_verify,
    }


async def status(request: web.Request) -> web.Response:
    await admin_of(request)
    last_verify_fn = request.app.get(LAST_VERIFY)
    last_verify = await last_verify_fn() if last_verify_fn is not None else None
    return web.json_response(await status_json(request.app[RUNTIME], last_verify))


async def retry_dead_letters(request: web.Request) -> web.Response:
    principal = await admin_of(request)
    rt = request.app[RUNTIME]
    async with audit.changing(rt.pool, principal, "dead_letters.retry") as conn:
        count = await deliveries.retry_dead(conn, rt.keys_of(rt.targets))
    rt.wake.set()
    return web.json_response({"requeued": count})


async def list_dead_letters(request: web.Request) -> web.Response:
    """The dead-lettered deliveries of the configured stores (at most 1000)."""
    principal = await admin_of(request)
    rt = request.app[RUNTIME]
    rows = await rt.pool.fetch(
        Q.delivery_dead_list,
        rt.keys_of(rt.targets),
        1000,
        *principal.sql_visibility("list"),
    )
    items = [
        {
            "target": rt.role_of(r["target"]),
            "secret_id": r["secret_id"],
            "name": r["name"],
            "version": r["version"],
            "attempts": r["attempts"],
            "last_error": r["last_error"],
        }
        for r in rows
    ]
    return web.json_response({"items": items})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/status", status)
    app.router.add_get("/admin/v1/dead-letters", list_dead_letters)
    app.router.add_post("/admin/v1/dead-letters/retry", retry_dead_letters)
