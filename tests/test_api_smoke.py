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


async def test_older_version_reports_its_own_version(api: Api) -> None:
    """`?version=N` returns version N's values and says it is version N."""
    created = await api.create("versioned", {"k": "one"})
    await api.request("PATCH", f"/api/v1/secrets/{created['id']}", json={"values": {"k": "two"}})
    status, body, headers = await api.request(
        "GET", f"/api/v1/secrets/{created['id']}", params={"version": "1"}
    )
    assert (status, body["version"], body["values"]) == (200, 1, {"k": "one"})
    assert headers["X-Secret-Source"] == "log"
