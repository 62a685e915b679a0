"""The event log: exactly one event per successful write, none for a refused one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from secretmirror.runtime import Runtime
from tests.conftest import Api

SECRETS = "/api/v1/secrets"


def item(secret_id: str) -> str:
    return f"{SECRETS}/{secret_id}"


async def events_of(runtime: Runtime, secret_id: str) -> list[tuple[int, str]]:
    rows = await runtime.pool.fetch(
        "SELECT version, kind FROM events WHERE secret_id = $1 ORDER BY seq", secret_id
    )
    return [(r["version"], r["kind"]) for r in rows]


async def event_count(runtime: Runtime) -> int:
    count: int = await runtime.pool.fetchval("SELECT count(*) FROM events")
    return count


async def test_create_appends_one_create_event(api: Api, runtime: Runtime) -> None:
    """A create leaves exactly one `create` event at version 1."""
    created = await api.create("new", {"a": "1"})
    assert await events_of(runtime, created["id"]) == [(1, "create")]


@pytest.mark.parametrize(
    ("method", "payload", "kind"),
    [
        ("PATCH", {"values": {"a": "2"}}, "update"),
        ("PUT", {"name": "evented", "values": {"b": "2"}}, "update"),
        ("PATCH", {"name": "renamed"}, "rename"),
        ("PATCH", {"private": True}, "rename"),
    ],
)
async def test_change_appends_one_event_at_the_returned_version(
    api: Api, runtime: Runtime, method: str, payload: dict[str, Any], kind: str
) -> None:
    """An update or rename leaves exactly one event whose version is the one returned."""
    created = await api.create("evented", {"a": "1"})
    status, body, _ = await api.request(method, item(created["id"]), json=payload)
    assert status == 200
    assert await events_of(runtime, created["id"]) == [(1, "create"), (body["version"], kind)]


async def test_delete_appends_one_delete_event(api: Api, runtime: Runtime) -> None:
    """A delete leaves exactly one `delete` event at the next version, without a snapshot."""
    created = await api.create("doomed", {"a": "1"})
    status, _, _ = await api.request("DELETE", item(created["id"]))
    assert status == 204
    assert await events_of(runtime, created["id"]) == [(1, "create"), (2, "delete")]
    snapshot = await runtime.pool.fetchval(
        "SELECT snapshot FROM events WHERE secret_id = $1 AND version = 2", created["id"]
    )
    assert snapshot is None


async def test_value_events_carry_an_encrypted_snapshot(api: Api, runtime: Runtime) -> None:
    """Create and update events hold a snapshot and a content hash."""
    created = await api.create("snap", {"a": "1"})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": "2"}})
    rows = await runtime.pool.fetch(
        "SELECT snapshot, hash FROM events WHERE secret_id = $1 ORDER BY version", created["id"]
    )
    assert len(rows) == 2
    assert all(r["snapshot"] is not None and r["hash"] for r in rows)


async def test_concurrent_patches_each_leave_one_event(api: Api, runtime: Runtime) -> None:
    """Concurrent PATCHes without If-Match each commit one event; versions have no gaps."""
    created = await api.create("busy", {"a": "0"})
    results = await asyncio.gather(
        *(
            api.request("PATCH", item(created["id"]), json={"values": {f"k{n}": str(n)}})
            for n in range(10)
        )
    )
    assert [status for status, _, _ in results] == [200] * 10
    returned = sorted(body["version"] for _, body, _ in results)
    assert returned == list(range(2, 12))
    assert await events_of(runtime, created["id"]) == [(1, "create")] + [
        (v, "update") for v in range(2, 12)
    ]
    _, read, _ = await api.request("GET", item(created["id"]))
    assert read["values"] == {"a": "0", **{f"k{n}": str(n) for n in range(10)}}


async def test_sequence_of_writes_has_one_event_each(api: Api, runtime: Runtime) -> None:
    """Create, update, rename and delete leave versions 1 to 4 with their kinds, in order."""
    created = await api.create("life", {"a": "1"})
    path = item(created["id"])
    await api.request("PATCH", path, json={"values": {"a": "2"}})
    await api.request("PATCH", path, json={"name": "life-2"})
    await api.request("DELETE", path)
    assert await events_of(runtime, created["id"]) == [
        (1, "create"),
        (2, "update"),
        (3, "rename"),
        (4, "delete"),
    ]


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "bad name", "values": {"a": "1"}},
        {"name": "ok", "values": {"bad key": "1"}},
        {"name": "ok", "values": {}},
        {"name": "ok", "values": {"a": "x" * 70_000}},
        {"name": "taken", "values": {"a": "1"}},
    ],
)
async def test_refused_create_leaves_no_event(
    api: Api, runtime: Runtime, payload: dict[str, Any]
) -> None:
    """A create refused for an invalid field, its size or a taken name appends nothing."""
    await api.create("taken", {"a": "1"})
    before = await event_count(runtime)
    status, _, _ = await api.request("POST", SECRETS, json=payload)
    assert status in (409, 413, 422)
    assert await event_count(runtime) == before


@pytest.mark.parametrize(
    ("method", "payload", "headers", "expected"),
    [
        ("PATCH", {"values": {"bad key": "x"}}, {}, 422),
        ("PATCH", {"values": {"a": None}}, {}, 422),
        ("PATCH", {"name": "bad name"}, {}, 422),
        ("PATCH", {"name": "taken"}, {}, 409),
        ("PATCH", {"values": {"a": "x" * 70_000}}, {}, 413),
        ("PATCH", {"values": {"a": "2"}}, {"If-Match": '"7"'}, 412),
        ("PUT", {"name": "target", "values": {"a": "2"}}, {"If-Match": '"7"'}, 412),
        ("DELETE", None, {"If-Match": '"7"'}, 412),
    ],
)
async def test_refused_change_leaves_no_event(
    api: Api,
    runtime: Runtime,
    method: str,
    payload: Any,
    headers: dict[str, str],
    expected: int,
) -> None:
    """A change refused by validation, a taken name, the size cap or If-Match appends nothing."""
    await api.create("taken", {"a": "1"})
    target = await api.create("target", {"a": "1"})
    before = await event_count(runtime)
    status, _, _ = await api.request(method, item(target["id"]), json=payload, headers=headers)
    assert status == expected
    assert await event_count(runtime) == before


async def test_forbidden_write_leaves_no_event(api: Api, runtime: Runtime) -> None:
    """A reader's refused writes append nothing."""
    target = await api.create("target", {"a": "1"})
    reader = api.as_token(await api.make_user("rita", "reader"))
    before = await event_count(runtime)
    for method, path, payload in [
        ("POST", SECRETS, {"name": "x", "values": {"a": "1"}}),
        ("PATCH", item(target["id"]), {"values": {"a": "2"}}),
        ("DELETE", item(target["id"]), None),
    ]:
        status, _, _ = await reader.request(method, path, json=payload)
        assert status == 403
    assert await event_count(runtime) == before
