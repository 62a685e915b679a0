"""``GET /admin/v1/audit``: the audit log, newest first, filtered, with a cursor (admin)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from aiohttp import web

from secretmirror.api.admin import admin_of
from secretmirror.api.keys import RUNTIME
from secretmirror.audit import ACTIONS, OUTCOMES, row_json
from secretmirror.errors import BadRequest
from secretmirror.queries import Q

_MAX_LIMIT = 1000
_FILTERS = ("actor", "secret_id", "secret_name", "action", "outcome", "since", "until")


async def list_audit(request: web.Request) -> web.Response:
    await admin_of(request, *_FILTERS, "limit", "cursor")
    query = request.query
    limit = _number(query.get("limit"), "limit", 100, 1, _MAX_LIMIT)
    cursor = query.get("cursor") or None
    before = _number(cursor, "cursor", 0, 1, 2**63 - 1) if cursor else None
    # Present means given: an empty enum or time is malformed, not "no filter".
    action, outcome = query.get("action"), query.get("outcome")
    if action is not None and action not in ACTIONS:
        raise BadRequest("action must be one of " + ", ".join(ACTIONS))
    if outcome is not None and outcome not in OUTCOMES:
        raise BadRequest("outcome must be one of " + ", ".join(OUTCOMES))
    actor, secret_name = query.get("actor") or None, query.get("secret_name") or None
    secret_id = _secret_id(query.get("secret_id"))
    since, until = _when(query.get("since"), "since"), _when(query.get("until"), "until")
    if not (_storable(actor) and _storable(secret_name)):
        # Text PostgreSQL cannot hold (NUL, a lone surrogate) is in no record: nothing matches,
        # as for the secrets list; it is not sent to the driver.
        return web.json_response({"items": [], "next_cursor": None})
    rows = await request.app[RUNTIME].pool.fetch(
        Q.audit_list,
        actor=actor,
        secret_id=secret_id,
        secret_name=secret_name,
        action=action,
        outcome=outcome,
        since=since,
        until=until,
        before=before,
        limit=limit + 1,
    )
    items = [row_json(r) for r in rows[:limit]]
    next_cursor = str(items[-1]["id"]) if len(rows) > limit else None
    return web.json_response({"items": items, "next_cursor": next_cursor})


def _number(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _storable(text: str | None) -> bool:
    if text is None:
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def _secret_id(text: str | None) -> uuid.UUID | None:
    if text is None:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        raise BadRequest("secret_id must be a secret id (a UUID)") from None


def _when(text: str | None, name: str) -> datetime | None:
    if text is None:
        return None
    try:
        found = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, like 2026-01-31T12:00:00Z") from None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/audit", list_audit)
