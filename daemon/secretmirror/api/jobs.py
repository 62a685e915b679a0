"""``/admin/v1``: reconcile jobs (admin only)."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from secretmirror.api.admin import admin_of
from secretmirror.api.keys import RUNTIME
from secretmirror.api.routes import _allowed, json_body
from secretmirror.errors import Invalid
from secretmirror.model import Principal
from secretmirror.queries import Q
from secretmirror.reconcile import MODES, Jobs

JOBS: web.AppKey[Jobs] = web.AppKey("jobs")


async def start_reconcile(request: web.Request) -> web.Response:
    principal = await admin_of(request)
    body = await json_body(request)
    _allowed(body, {"mode", "delete_secrets", "dry_run", "stores"})
    mode = body.get("mode")
    if mode not in MODES:
        raise Invalid("mode must be one of verify, repair, backup, restore")
    dry_run = body.get("dry_run", False)
    delete_secrets = body.get("delete_secrets", False)
    if not isinstance(dry_run, bool) or not isinstance(delete_secrets, bool):
        raise Invalid("dry_run and delete_secrets must be true or false")
    if delete_secrets and mode not in ("backup", "restore"):
        raise Invalid("delete_secrets applies to backup and restore only")
    # Absent means every store; null is refused, as the OpenAPI document says (an array).
    stores = body.get("stores")
    if "stores" in body and (
        not isinstance(stores, list)
        or not stores
        or not all(isinstance(name, str) for name in stores)
    ):
        raise Invalid("stores must be a non-empty list of store names")
    job = await request.app[JOBS].start(
        mode, dry_run=dry_run, delete_secrets=delete_secrets, stores=stores, principal=principal
    )
    return web.json_response(job, status=202)


async def list_jobs(request: web.Request) -> web.Response:
    await admin_of(request)
    return web.json_response({"items": await request.app[JOBS].list()})


async def get_job(request: web.Request) -> web.Response:
    """The job, and the names of its sample secrets the caller may see (``sample_names``)."""
    principal = await admin_of(request)
    job = await request.app[JOBS].get(request.match_info["id"])
    job["sample_names"] = await _sample_names(request, principal, job.get("samples") or {})
    return web.json_response(job)


async def _sample_names(
    request: web.Request, principal: Principal, samples: dict[str, Any]
) -> dict[str, dict[str, list[str]]]:
    ids = {i for per in samples.values() for listed in per.values() for i in listed}
    if not ids:
        return {}
    uuids = [u for u in map(_uuid_or_none, ids) if u is not None]
    rows = await request.app[RUNTIME].pool.fetch(
        Q.secret_names_of, uuids, *principal.sql_visibility("list")
    )
    names = {r["id"]: r["name"] for r in rows}
    # A mirror keyed by name lists its entries by name (shared secrets only): as they are.
    names.update((i, i) for i in ids if _uuid_or_none(i) is None)
    return {
        store: {cls: sorted(names[i] for i in listed if i in names) for cls, listed in per.items()}
        for store, per in samples.items()
    }


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


async def cancel_job(request: web.Request) -> web.Response:
    principal = await admin_of(request)
    return web.json_response(await request.app[JOBS].cancel(request.match_info["id"], principal))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/admin/v1/reconcile", start_reconcile)
    app.router.add_get("/admin/v1/jobs", list_jobs)
    app.router.add_get("/admin/v1/jobs/{id}", get_job)
    app.router.add_post("/admin/v1/jobs/{id}/cancel", cancel_job)
