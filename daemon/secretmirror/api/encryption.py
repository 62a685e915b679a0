"""``/admin/v1/keys``: the key inventory and the rekey job (admin only)."""

from __future__ import annotations

from aiohttp import web

from secretmirror.api.admin import admin_of
from secretmirror.api.jobs import JOBS
from secretmirror.api.keys import RUNTIME
from secretmirror.keys import take_inventory
from secretmirror.rekey import holders_of


async def list_keys(request: web.Request) -> web.Response:
    """Ciphertexts per configured key (position 0 encrypts) and under unknown keys."""
    await admin_of(request)
    rt = request.app[RUNTIME]
    inventory = await take_inventory(holders_of(rt))
    return web.json_response(inventory.to_json(rt.keyring))


async def rotate(request: web.Request) -> web.Response:
    """Start the rekey job: re-encrypt everything under the first configured key."""
    principal = await admin_of(request)
    job = await request.app[JOBS].start(
        "rekey", dry_run=False, delete_secrets=False, principal=principal, action="keys.rotate"
    )
    return web.json_response(job, status=202)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/v1/keys", list_keys)
    app.router.add_post("/admin/v1/keys/rotate", rotate)
