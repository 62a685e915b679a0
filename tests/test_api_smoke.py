"""The first end-to-end checks of the secrets API against a real PostgreSQL."""

from __future__ import annotations

from tests.conftest import Api


async def test_create_get_roundtrip(api: Api) -> None:
    """A created secret reads back with its values from the primary."""
    created = await api.create("db-password", {"user": "app", "password": "hunter2"})
    status, body, headers = await api.request("GET", f"/api/v1/secrets/{created['id']}")
    assert status == 200
    assert body["values"] == {"user": "app", "password": "hunter2"}
    assert body["version"] == 1
    assert headers["X-Secret-Source"] == "primary"
