"""``/api/v1``: secrets, users and tokens."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import uuid
from typing import Any

from aiohttp import web

from secretmirror import feed
from secretmirror.api import auditing
from secretmirror.api.keys import ACCOUNTS, RUNTIME, SERVICE
from secretmirror.api.protocol import BODY_TIMEOUT_S
from secretmirror.auth import authenticate
from secretmirror.errors import (
    BadRequest,
    Forbidden,
    Invalid,
    NotFound,
    RequestTimeout,
    TooManyRequests,
    Unauthorized,
    echoed,
)
from secretmirror.model import Principal
from secretmirror.service import Listed, ReadResult

_MAX_LIMIT = 1000
#: A strong entity tag holding a version, as the ETag header sends it, or the bare number.
_IF_MATCH = re.compile(r'"([0-9]{1,9})"|([0-9]{1,9})', re.ASCII)


async def principal_of(request: web.Request) -> Principal:
    rt = request.app[RUNTIME]
    address = request.remote or "unknown"
    wait_s = rt.auth_failures.retry_after(address)
    if wait_s > 0:
        raise TooManyRequests(wait_s)
    try:
        principal = await authenticate(rt.pool, request.headers.get("Authorization"), rt.tokens)
    except Unauthorized:
        rt.auth_failures.failed(address)
        raise
    auditing.note_principal(request, principal)
    return principal


def noted(request: web.Request, result: ReadResult) -> ReadResult:
    """Name the secret a request read or changed in its audit record."""
    auditing.note_secret(request, result.meta.id, result.meta.name)
    return result


async def writer_of(request: web.Request) -> Principal:
    principal = await principal_of(request)
    if not principal.can_write:
        raise Forbidden("readers cannot change secrets")
    return principal


def check_query(request: web.Request, *allowed: str) -> None:
    """400 for a query parameter the route does not know (a typo must not widen a list)."""
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise BadRequest(f"unknown query parameter {echoed(unknown[0])}")


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout() from None
    try:
        # ValueError covers bad JSON, bad bytes for the charset and integers too long
        # to convert; LookupError an unknown charset; RecursionError absurd nesting.
        body = json.loads(raw.decode(request.charset or "utf-8"))
    except (ValueError, LookupError, RecursionError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _allowed(body: dict[str, Any], fields: set[str]) -> None:
    unknown = sorted(set(body) - fields)
    if unknown:
        raise Invalid(f"unknown field {echoed(unknown[0])}")


def _not_null(body: dict[str, Any], *fields: str) -> None:
    """An explicit null would otherwise read as "absent" (unchanged, the default)."""
    for field in fields:
        if field in body and body[field] is None:
            raise Invalid(f"{field} must not be null")


def if_match(request: web.Request) -> int | None:
    header = request.headers.get("If-Match")
    if header is None:
        return None
    match = _IF_MATCH.fullmatch(header.strip())
    if match is None:
        raise BadRequest('If-Match must be a version in quotes, like "3"')
    return int(match.group(1) or match.group(2))


def secret_response(result: ReadResult, status: int = 200, values: bool = True) -> web.Response:
    body = result.meta.to_json(result.values if values else None)
    response = web.json_response(body, status=status)
    response.headers["ETag"] = f'"{result.meta.version}"'
    if values:
        response.headers["X-Secret-Source"] = result.source
    return response


async def create_secret(request: web.Request) -> web.Response:
    principal = await writer_of(request)
    check_query(request)
    body = await json_body(request)
    _allowed(body, {"name", "values", "private"})
    result = await request.app[SERVICE].create(
        principal, body.get("name"), body.get("values"), body.get("private", False)
    )
    return secret_response(noted(request, result), status=201)


async def list_secrets(request: web.Request) -> web.Response:
    """Metadata, or with ``values=true`` the values too: one request for a bulk read."""
    principal = await principal_of(request)
    check_query(request, "name", "name_prefix", "private", "limit", "cursor", "values")
    query = request.query
    limit = _int_param(query.get("limit"), "limit", 100, 1, _MAX_LIMIT)
    private = _bool_param(query.get("private"), "private")
    with_values = bool(_bool_param(query.get("values"), "values"))
    after = _decode_cursor(query.get("cursor"))
    name, name_prefix = query.get("name") or None, query.get("name_prefix") or None
    if "\x00" in (name or "") + (name_prefix or ""):
        # No name holds NUL, and PostgreSQL text cannot: nothing matches.
        return web.json_response({"items": [], "next_cursor": None})
    service = request.app[SERVICE]
    options: dict[str, Any] = {
        "name": name,
        "name_prefix": name_prefix,
        "private": private,
        "limit": limit + 1,
        "after": after,
    }
    if with_values:
        return _bulk_page(request, await service.list_with_values(principal, **options), limit)
    items = [m.to_json() for m in await service.list_secrets(principal, **options)]
    next_cursor = None
    if len(items) > limit:
        items = items[:limit]
        next_cursor = _encode_cursor(items[-1]["name"], items[-1]["id"])
    return web.json_response({"items": items, "next_cursor": next_cursor})


def _bulk_page(request: web.Request, listed: list[Listed], limit: int) -> web.Response:
    """A bulk read's page: the items are JSON text already (``Listed``), joined as they are."""
    next_cursor = None
    if len(listed) > limit:
        listed = listed[:limit]
        next_cursor = _encode_cursor(listed[-1].name, listed[-1].id)
    auditing.note_secrets(request, [(i.id, i.name) for i in listed])
    items = ", ".join(i.json for i in listed)
    body = f'{{"items": [{items}], "next_cursor": {json.dumps(next_cursor)}}}'
    return web.Response(text=body, content_type="application/json")


async def get_secret_by_name(request: web.Request) -> web.Response:
    """The secret called ``name``, as ``GET /api/v1/secrets/{id}`` (for ESO and scripts)."""
    principal = await principal_of(request)
    check_query(request, "private")
    private = _bool_param(request.query.get("private"), "private")
    name = request.match_info["name"]
    if "\x00" in name:
        raise NotFound("no such secret")
    result = await request.app[SERVICE].by_name(principal, name, private)
    return secret_response(noted(request, result))


async def history_by_name(request: web.Request) -> web.Response:
    """The history of the secret called ``name``; ``deleted=true``: of the last deleted one."""
    principal = await principal_of(request)
    check_query(request, "private", "deleted")
    private = _bool_param(request.query.get("private"), "private")
    deleted = _bool_param(request.query.get("deleted"), "deleted")
    name = request.match_info["name"]
    if "\x00" in name:
        raise NotFound("no such secret")
    service = request.app[SERVICE]
    if deleted:
        return web.json_response({"items": await service.deleted_history(principal, name)})
    meta = await service.by_name_meta(principal, name, private, "list")
    auditing.note_secret(request, meta.id, meta.name)
    return web.json_response({"items": await service.history(principal, meta.id)})


async def list_events(request: web.Request) -> web.Response:
    """The change feed, long-polled: returns at the first event after ``after``, or at ``wait``."""
    principal = await principal_of(request)
    check_query(request, "after", "wait", "name_prefix")
    query = request.query
    after = query.get("after")
    position = None if after is None else _int_param(after, "after", 0, 0, 2**63 - 1)
    wait_s = _float_param(query.get("wait"), "wait", 0.0, 0.0, feed.MAX_WAIT_S)
    name_prefix = query.get("name_prefix") or None
    if "\x00" in (name_prefix or ""):
        # PostgreSQL text cannot hold NUL; a newline starts no name either: nothing matches.
        name_prefix = "\n"
    rt = request.app[RUNTIME]
    body = await feed.read(
        rt.pool, rt.changes, principal, after=position, wait_s=wait_s, name_prefix=name_prefix
    )
    return web.json_response(body)


async def get_secret(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request, "version")
    service = request.app[SERVICE]
    secret_id = request.match_info["id"]
    version = request.query.get("version")
    if version is not None:
        number = _int_param(version, "version", 0, 1, 2**31 - 1)
        return secret_response(
            noted(request, await service.read_version(principal, secret_id, number))
        )
    return secret_response(noted(request, await service.read(principal, secret_id)))


async def patch_secret(request: web.Request) -> web.Response:
    return await _update(request, merge=True)


async def put_secret(request: web.Request) -> web.Response:
    return await _update(request, merge=False)


async def _update(request: web.Request, *, merge: bool) -> web.Response:
    principal = await writer_of(request)
    check_query(request)
    expected = if_match(request)
    body = await json_body(request)
    _allowed(body, {"name", "values", "private"})
    if not merge and ("name" not in body or "values" not in body):
        raise Invalid("PUT needs name and values")
    _not_null(body, "name", "private", "values")
    if "values" in body and not isinstance(body["values"], dict):
        raise Invalid("values must be an object")
    result = await request.app[SERVICE].update(
        principal,
        request.match_info["id"],
        name=body.get("name"),
        # Absent, ``private`` keeps its value for PUT too: a PUT that forgot the
        # field must not publish a private secret to every user.
        private=body.get("private"),
        values=body.get("values"),
        merge=merge,
        if_match=expected,
    )
    noted(request, result)
    if result.kind == "rename":
        auditing.note_action(request, "secret.rename")
    # A token that may write but not read a secret gets its metadata only: a merge
    # would otherwise show it the keys it did not send.
    return secret_response(result, values=principal.allows("read", result.meta.name))


async def delete_secret(request: web.Request) -> web.Response:
    principal = await writer_of(request)
    check_query(request)
    expected = if_match(request)
    meta = await request.app[SERVICE].delete(principal, request.match_info["id"], expected)
    auditing.note_secret(request, meta.id, meta.name)
    return web.Response(status=204)


async def secret_history(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    events = await request.app[SERVICE].history(principal, request.match_info["id"])
    return web.json_response({"items": events})


async def create_user(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    body = await json_body(request)
    _allowed(body, {"name", "role"})
    user = await request.app[ACCOUNTS].create_user(principal, body.get("name"), body.get("role"))
    return web.json_response(user, status=201)


async def list_users(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    return web.json_response({"items": await request.app[ACCOUNTS].list_users(principal)})


async def update_user(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    body = await json_body(request)
    _allowed(body, {"role", "disabled"})
    _not_null(body, "role", "disabled")
    user = await request.app[ACCOUNTS].update_user(
        principal, request.match_info["id"], body.get("role"), body.get("disabled")
    )
    return web.json_response(user)


async def delete_user(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    await request.app[ACCOUNTS].delete_user(principal, request.match_info["id"])
    return web.Response(status=204)


async def create_token(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    body = await json_body(request)
    _allowed(body, {"user", "name", "expires_in_s", "scopes"})
    _not_null(body, "user", "expires_in_s")
    token = await request.app[ACCOUNTS].create_token(
        principal,
        body.get("user"),
        body.get("name"),
        body.get("expires_in_s"),
        body.get("scopes"),
    )
    return web.json_response(token, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    return web.json_response({"items": await request.app[ACCOUNTS].list_tokens(principal)})


async def revoke_token(request: web.Request) -> web.Response:
    principal = await principal_of(request)
    check_query(request)
    await request.app[ACCOUNTS].revoke_token(principal, request.match_info["id"])
    return web.Response(status=204)


def _int_param(text: str | None, name: str, default: int, low: int, high: int) -> int:
    if text is None:
        return default
    if not _is_number(text) or not low <= int(text) <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return int(text)


def _float_param(text: str | None, name: str, default: float, low: float, high: float) -> float:
    if text is None:
        return default
    try:
        number = float(text) if text.isascii() else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:  # NaN fails both comparisons
        raise BadRequest(f"{name} must be a number of seconds from {low:g} to {high:g}")
    return number


def _is_number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²", which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def _bool_param(text: str | None, name: str) -> bool | None:
    if text is None:
        return None
    if text not in ("true", "false"):
        raise BadRequest(f"{name} must be true or false")
    return text == "true"


def _encode_cursor(name: str, secret_id: str) -> str:
    raw = json.dumps([name, secret_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str | None) -> tuple[str, str] | None:
    if not text:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        decoded = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise BadRequest("cursor is not valid") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != 2
        or not all(isinstance(part, str) for part in decoded)
        or "\x00" in decoded[0]
        or not _encodable(decoded[0])
    ):
        raise BadRequest("cursor is not valid")
    name, secret_id = decoded
    try:
        uuid.UUID(secret_id)
    except ValueError:
        raise BadRequest("cursor is not valid") from None
    return name, secret_id


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/api/v1/secrets", create_secret)
    r.add_get("/api/v1/secrets", list_secrets)
    # Before the {id} routes: "/by-name/history" must not read as the history of "by-name".
    r.add_get("/api/v1/secrets/by-name/{name}", get_secret_by_name)
    r.add_get("/api/v1/secrets/by-name/{name}/history", history_by_name)
    r.add_get("/api/v1/secrets/{id}", get_secret)
    r.add_patch("/api/v1/secrets/{id}", patch_secret)
    r.add_put("/api/v1/secrets/{id}", put_secret)
    r.add_delete("/api/v1/secrets/{id}", delete_secret)
    r.add_get("/api/v1/secrets/{id}/history", secret_history)
    r.add_get("/api/v1/events", list_events)
    r.add_post("/api/v1/users", create_user)
    r.add_get("/api/v1/users", list_users)
    r.add_patch("/api/v1/users/{id}", update_user)
    r.add_delete("/api/v1/users/{id}", delete_user)
    r.add_post("/api/v1/tokens", create_token)
    r.add_get("/api/v1/tokens", list_tokens)
    r.add_delete("/api/v1/tokens/{id}", revoke_token)


def _encodable(text: str) -> bool:
    """False for text PostgreSQL cannot take (a lone surrogate from a JSON escape)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
