"""The audit middleware: one record per audited request, committed before the response.

Which requests are audited is decided here, by route and method, so a handler
only adds what it alone knows: the secret it touched (``note_secret``), the
secrets a bulk read returned (``note_secrets``) and, for a change, whether it
was a rename (``note_action``). Every failed authentication is audited,
whatever the route. When the record cannot be written the response becomes
503 (fail closed): a read's values are never sent unrecorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from aiohttp import web

from secretmirror.access import Principal
from secretmirror.audit import PENDING, AuditLog, Entry, Pending, outcome_of
from secretmirror.errors import SecretMirrorError

AUDIT = web.AppKey("audit", AuditLog)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PRINCIPAL = web.RequestKey("principal", Principal)
REQUEST_ID = web.RequestKey("request_id", str)
_NOTED: web.RequestKey[tuple[str, str | None]] = web.RequestKey("audit_secret")
_SECRETS: web.RequestKey[list[tuple[str, str]]] = web.RequestKey("audit_secrets")
_ACTION = web.RequestKey("audit_action", str)

#: (method, route) -> action. Reads of metadata (lists, users, tokens, jobs) are not
#: audited: the log is the trail of values read and of changes made.
_ACTIONS = {
    ("GET", "/api/v1/secrets/{id}"): "secret.read",
    ("GET", "/api/v1/secrets/by-name/{name}"): "secret.read",
    ("POST", "/api/v1/secrets"): "secret.create",
    ("PATCH", "/api/v1/secrets/{id}"): "secret.update",
    ("PUT", "/api/v1/secrets/{id}"): "secret.update",
    ("DELETE", "/api/v1/secrets/{id}"): "secret.delete",
    ("GET", "/api/v1/secrets/{id}/history"): "secret.history",
    ("GET", "/api/v1/secrets/by-name/{name}/history"): "secret.history",
    ("POST", "/api/v1/users"): "user.create",
    ("PATCH", "/api/v1/users/{id}"): "user.update",
    ("DELETE", "/api/v1/users/{id}"): "user.delete",
    ("POST", "/api/v1/tokens"): "token.create",
    ("DELETE", "/api/v1/tokens/{id}"): "token.revoke",
    ("POST", "/admin/v1/reconcile"): "job.start",
    ("POST", "/admin/v1/jobs/{id}/cancel"): "job.cancel",
    ("POST", "/admin/v1/dead-letters/retry"): "dead_letters.retry",
    ("POST", "/admin/v1/keys/rotate"): "keys.rotate",
}
#: The changes whose record the statement committing them writes (``audit.Pending``), and
#: the answer each gives when it succeeds.
_COMMITTED_WITH_CHANGE = {
    "secret.create": 201,
    "secret.update": 200,
    "secret.rename": 200,
    "secret.delete": 204,
    "user.create": 201,
    "user.update": 200,
    "user.delete": 204,
    "token.create": 201,
    "token.revoke": 204,
    "job.start": 202,
    "job.cancel": 200,
    "dead_letters.retry": 200,
    "keys.rotate": 202,
}
#: The list route is audited only as a bulk read (``values=true``).
_BULK_READ = ("GET", "/api/v1/secrets")


def note_principal(request: web.Request, principal: Principal) -> None:
    request[PRINCIPAL] = principal


def note_secret(request: web.Request, secret_id: str, name: str | None) -> None:
    request[_NOTED] = (secret_id, name)


def note_secrets(request: web.Request, found: list[tuple[str, str]]) -> None:
    """A bulk read: one record per secret returned."""
    request[_SECRETS] = found


def note_action(request: web.Request, action: str) -> None:
    request[_ACTION] = action


def _action(request: web.Request, route: str | None) -> str | None:
    if route is None:
        return None
    key = (request.method, route)
    if key == _BULK_READ:
        return "secret.read" if request.query.get("values") == "true" else None
    action = _ACTIONS.get(key)
    if action == "secret.read" and "version" in request.query:
        return "secret.read_version"
    return action


def _route(request: web.Request) -> str | None:
    info = request.match_info
    if info.http_exception is not None or info.route.resource is None:
        return None
    return info.route.resource.canonical


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Write the request's audit records, then let the response go (or answer 503).

    A change writes its record in the transaction that commits it (``audit.Pending``:
    the statement of a secret's change, ``audit.changing`` for the others); this writes
    the record of every other audited request, and of a change that committed nothing
    (refused, failed, or nothing to change)."""
    error: BaseException | None = None
    log = request.app[AUDIT]
    route_action = _action(request, _route(request))
    pending = None
    if log.enabled and route_action in _COMMITTED_WITH_CHANGE:
        pending = Pending(request.remote, request.get(REQUEST_ID), _COMMITTED_WITH_CHANGE)
    reset = PENDING.set(pending)
    try:
        response = await handler(request)
        status = response.status
    except SecretMirrorError as exc:
        error, status = exc, exc.status
    except web.HTTPException as exc:
        error, status = exc, exc.status
    except Exception as exc:
        error, status = exc, 500
    finally:
        PENDING.reset(reset)
    if pending is not None and pending.written is not None:
        await log.written(*pending.written)
    else:
        action = "auth.failed" if status == 401 else route_action
        if action is not None:
            await log.write(_entry(request, action, status))
    if error is not None:
        raise error
    return response


def _entry(request: web.Request, action: str, status: int) -> Entry:
    principal = request.get(PRINCIPAL)
    outcome = outcome_of(status)
    action = request.get(_ACTION, action) if outcome == "ok" else action
    bulk = request.get(_SECRETS)
    secrets: Sequence[tuple[str | None, str | None]]
    if bulk is not None and outcome == "ok":
        secrets = bulk
    elif (noted := request.get(_NOTED)) is not None:
        secrets = [noted]
    else:
        secrets = [(_path_secret_id(request), None)]
    return Entry(
        at=datetime.now(UTC),
        actor=principal.actor if principal else None,
        token_id=principal.token_id if principal else None,
        action=action,
        outcome=outcome,
        status=status,
        remote_addr=request.remote,
        request_id=request.get(REQUEST_ID),
        secrets=secrets,
    )


def _path_secret_id(request: web.Request) -> str | None:
    """The id in the path of a secret route, when it is one (a failed request, a failed
    authentication too, still names what it tried to reach)."""
    route = _route(request)
    if route is None or not route.startswith("/api/v1/secrets/{id}"):
        return None
    raw = request.match_info.get("id")
    if raw is None:
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None
