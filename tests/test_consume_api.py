"""Consuming secrets over HTTP (spec section 15): by-name reads, bulk reads, the change feed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from secretmirror import replication
from secretmirror.daemon import bind_listener, open_runtime
from secretmirror.model import SecretMeta, canonical
from secretmirror.runtime import Runtime
from tests.conftest import Api, make_settings
from tests.daemon_proc import free_port

SECRETS = "/api/v1/secrets"
EVENTS = "/api/v1/events"
#: A long poll's wait in the wake-up tests: returning well before it proves the wake-up.
LONG_WAIT_S = 30


def error_code(body: Any) -> str:
    return str(body["error"]["code"])


async def get_ok(api: Api, path: str, **params: Any) -> Any:
    status, body, _ = await api.request("GET", path, params={k: str(v) for k, v in params.items()})
    assert status == 200, body
    return body


async def feed(api: Api, **params: Any) -> Any:
    """One feed call. Where events are expected it waits for them (up to 5 s): the feed
    holds back events while any older transaction on the server is still open."""
    if "after" in params:
        params.setdefault("wait", 5)
    return await get_ok(api, EVENTS, **params)


def summary(events: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
    return [(e["name"], e["version"], e["kind"]) for e in events]


# -- by name ----------------------------------------------------------------------


async def test_by_name_returns_the_secret_with_values(api: Api) -> None:
    """GET /secrets/by-name/{name} answers as GET /secrets/{id}: values, ETag, source."""
    created = await api.create("db", {"password": "pw"})
    status, body, headers = await api.request("GET", f"{SECRETS}/by-name/db")
    assert status == 200
    assert body == created
    found = {k.lower(): v for k, v in headers.items()}
    assert (found["etag"], found["x-secret-source"]) == ('"1"', "primary")


async def test_by_name_of_an_unknown_name_is_404(api: Api) -> None:
    """A name nobody uses is 404 not_found."""
    status, body, _ = await api.request("GET", f"{SECRETS}/by-name/nothing")
    assert (status, error_code(body)) == (404, "not_found")


async def test_by_name_history_is_a_name_not_the_history_route(api: Api) -> None:
    """/by-name/history reads the secret called "history"."""
    await api.create("history", {"k": "v"})
    body = await get_ok(api, f"{SECRETS}/by-name/history")
    assert body["values"] == {"k": "v"}


async def test_by_name_with_a_private_and_a_shared_secret_is_ambiguous(api: Api) -> None:
    """Who sees a private and a shared secret of one name gets 409 ambiguous_name, and picks."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    shared = await api.create("db", {"who": "shared"})
    mine = await alice.create("db", {"who": "alice"}, private=True)
    status, body, _ = await alice.request("GET", f"{SECRETS}/by-name/db")
    assert (status, error_code(body)) == (409, "ambiguous_name")
    picked_private = await get_ok(alice, f"{SECRETS}/by-name/db", private="true")
    picked_shared = await get_ok(alice, f"{SECRETS}/by-name/db", private="false")
    assert (picked_private["id"], picked_private["values"]) == (mine["id"], {"who": "alice"})
    assert (picked_shared["id"], picked_shared["values"]) == (shared["id"], {"who": "shared"})


async def test_by_name_never_shows_someone_elses_private_secret(api: Api) -> None:
    """The admin does not see alice's private "db": the shared one, and 404 asking for private."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    shared = await api.create("db", {"who": "shared"})
    await alice.create("db", {"who": "alice"}, private=True)
    assert (await get_ok(api, f"{SECRETS}/by-name/db"))["id"] == shared["id"]
    status, _, _ = await api.request("GET", f"{SECRETS}/by-name/db", params={"private": "true"})
    assert status == 404


async def test_by_name_private_must_be_true_or_false(api: Api) -> None:
    """?private=yes is 400."""
    await api.create("db", {"k": "v"})
    status, body, _ = await api.request("GET", f"{SECRETS}/by-name/db", params={"private": "yes"})
    assert (status, error_code(body)) == (400, "bad_request")


# -- bulk reads -------------------------------------------------------------------


async def test_list_with_values_returns_every_value(api: Api) -> None:
    """values=true puts each secret's values into its list item."""
    for i in range(5):
        await api.create(f"app-{i}", {"n": str(i)})
    await api.create("other", {"n": "x"})
    page = await get_ok(api, SECRETS, values="true", name_prefix="app-")
    assert [(i["name"], i["values"]) for i in page["items"]] == [
        (f"app-{i}", {"n": str(i)}) for i in range(5)
    ]
    assert page["next_cursor"] is None


async def test_a_bulk_item_is_what_a_get_answers(api: Api) -> None:
    """Each item of a bulk read has the fields and values GET /secrets/{id} answers."""
    values = [{"b": "2", "a": "1"}, {"k": 'caf\u00e9 "quoted" \\ \u2603', "z": ""}]
    ids = [(await api.create(f"same-{i}", v))["id"] for i, v in enumerate(values)]
    page = await get_ok(api, SECRETS, values="true", name_prefix="same-")
    assert page["items"] == [await get_ok(api, f"{SECRETS}/{i}") for i in ids]


def test_row_json_is_to_json_as_text() -> None:
    """SecretMeta.row_json gives the JSON of to_json, for any text and a whole-second time."""
    when = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)
    row = {
        "id": str(uuid.uuid4()),
        "name": 'odd "name" \u00e9\\',
        "owner": str(uuid.uuid4()),
        "private": True,
        "version": 7,
        "created": when,
        "updated": when.replace(microsecond=123),
    }
    values = {"b": "x\ny", "a": "\u2603"}
    text = SecretMeta.row_json(row, canonical(values).decode())
    assert json.loads(text) == SecretMeta.from_row(row).to_json(values)
    # The same instant in another zone is an equal datetime but not the same text.
    elsewhere = {**row, "created": when.astimezone(timezone(timedelta(hours=2)))}
    text = SecretMeta.row_json(elsewhere, canonical(values).decode())
    assert json.loads(text)["created"] == "2026-12-03T12:00:00+02:00"


async def test_list_without_values_has_none(api: Api) -> None:
    """The plain list (and values=false) stays metadata only."""
    await api.create("app", {"n": "1"})
    for params in ({}, {"values": "false"}):
        page = await get_ok(api, SECRETS, **params)
        assert "values" not in page["items"][0]


async def test_list_with_values_pages_with_the_cursor(api: Api) -> None:
    """A bulk read pages like the list: limit, then next_cursor, nothing lost or repeated."""
    for i in range(7):
        await api.create(f"s{i}", {"n": str(i)})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"values": "true", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await get_ok(api, SECRETS, **params)
        seen += [i["values"]["n"] for i in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [str(i) for i in range(7)]


async def test_a_bulk_read_by_prefix_pages_as_the_list_does(api: Api) -> None:
    """With a name prefix (its own query), a bulk read pages with the cursor and filters
    on private as the metadata list does: the same secrets, in the same order."""
    for i in range(7):
        await api.create(f"pre-{i}", {"n": str(i)}, private=i % 3 == 0)
    await api.create("prefix-other", {"n": "x"})
    for private in (None, "true", "false"):
        extra = {} if private is None else {"private": private}
        listed = await get_ok(api, SECRETS, name_prefix="pre-", **extra)
        seen: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"values": "true", "name_prefix": "pre-", "limit": 2}
            page = await get_ok(
                api, SECRETS, **params, **extra, **({"cursor": cursor} if cursor else {})
            )
            seen += [f"{i['name']}={i['values']['n']}" for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == [f"{i['name']}={i['name'][4:]}" for i in listed["items"]]
        assert len(seen) == {None: 7, "true": 3, "false": 4}[private]


async def test_list_with_values_allows_1000_and_refuses_more(api: Api) -> None:
    """limit goes up to 1000 with values too; 1001 is 400."""
    await api.create("one", {"n": "1"})
    assert len((await get_ok(api, SECRETS, values="true", limit=1000))["items"]) == 1
    status, _, _ = await api.request("GET", SECRETS, params={"values": "true", "limit": "1001"})
    assert status == 400


async def test_list_with_values_leaves_out_others_private_secrets(api: Api) -> None:
    """A bulk read shows what the list shows: not another user's private secrets."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    await alice.create("app-alice", {"k": "private"}, private=True)
    await api.create("app-shared", {"k": "shared"})
    admin_names = [i["name"] for i in (await get_ok(api, SECRETS, values="true"))["items"]]
    alice_items = (await get_ok(alice, SECRETS, values="true"))["items"]
    assert admin_names == ["app-shared"]
    assert [(i["name"], i["values"]) for i in alice_items] == [
        ("app-alice", {"k": "private"}),
        ("app-shared", {"k": "shared"}),
    ]


async def test_list_with_values_falls_back_to_the_log(api: Api, runtime: Runtime) -> None:
    """A secret whose stored value is missing is served from the event log, not left out."""
    created = await api.create("lost", {"k": "v"})
    await runtime.pool.execute(
        "DELETE FROM secretmirror_values WHERE secret_id = $1", uuid.UUID(created["id"])
    )
    page = await get_ok(api, SECRETS, values="true")
    assert [i["values"] for i in page["items"]] == [{"k": "v"}]


# -- the change feed --------------------------------------------------------------


async def test_feed_lists_changes_in_commit_order(api: Api) -> None:
    """after=0 lists every change in order, with the name a deleted secret had."""
    a = await api.create("a", {"k": "1"})
    await api.request("PATCH", f"{SECRETS}/{a['id']}", json={"values": {"k": "2"}})
    await api.create("b", {"k": "1"})
    await api.request("PATCH", f"{SECRETS}/{a['id']}", json={"name": "a2"})
    await api.request("DELETE", f"{SECRETS}/{a['id']}")
    body = await feed(api, after=0)
    assert summary(body["events"]) == [
        ("a", 1, "create"),
        ("a", 2, "update"),
        ("b", 1, "create"),
        ("a2", 3, "rename"),
        ("a2", 4, "delete"),
    ]
    seqs = [e["seq"] for e in body["events"]]
    assert seqs == sorted(seqs)
    assert body["last_seq"] == seqs[-1]
    assert all("values" not in e and set(e) >= {"secret_id", "recorded_at"} for e in body["events"])


async def test_feed_continues_after_last_seq(api: Api) -> None:
    """Passing last_seq back gives only what came after it."""
    await api.create("a", {"k": "1"})
    first = await feed(api, after=0)
    await api.create("b", {"k": "1"})
    second = await feed(api, after=first["last_seq"])
    assert summary(second["events"]) == [("b", 1, "create")]


async def test_feed_without_after_starts_now(api: Api) -> None:
    """Without after, nothing that happened before; last_seq is where "now" is."""
    await api.create("old", {"k": "1"})
    now = await feed(api)
    assert now["events"] == []
    await api.create("new", {"k": "1"})
    assert summary((await feed(api, after=now["last_seq"]))["events"]) == [("new", 1, "create")]


async def test_feed_filters_by_name_prefix(api: Api) -> None:
    """name_prefix keeps only the secrets whose name starts with it."""
    await api.create("app-a", {"k": "1"})
    await api.create("web-a", {"k": "1"})
    body = await feed(api, after=0, name_prefix="app-")
    assert summary(body["events"]) == [("app-a", 1, "create")]


async def test_feed_shows_private_secrets_to_their_owner_only(api: Api) -> None:
    """Alice sees the events of her private secret; the admin does not, not even its name."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    await alice.create("alice-db", {"k": "1"}, private=True)
    await api.create("shared", {"k": "1"})
    assert summary((await feed(alice, after=0))["events"]) == [
        ("alice-db", 1, "create"),
        ("shared", 1, "create"),
    ]
    admin_view = await feed(api, after=0)
    assert summary(admin_view["events"]) == [("shared", 1, "create")]


async def test_feed_keeps_a_private_era_private(api: Api) -> None:
    """Events written while a secret was private stay hidden after it is shared."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    mine = await alice.create("was-private", {"k": "1"}, private=True)
    status, _, _ = await alice.request("PATCH", f"{SECRETS}/{mine['id']}", json={"private": False})
    assert status == 200
    assert summary((await feed(api, after=0))["events"]) == [("was-private", 2, "rename")]


async def test_feed_moves_last_seq_past_events_the_caller_cannot_see(api: Api) -> None:
    """The next call does not read invisible events again: last_seq moved past them."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    start = await feed(api)
    await alice.create("hidden", {"k": "1"}, private=True)
    body = await feed(api, after=start["last_seq"], wait=2)
    assert body["events"] == []
    assert body["last_seq"] > start["last_seq"]


async def test_feed_wait_returns_empty_after_the_wait(api: Api) -> None:
    """With nothing to report, a long poll answers an empty list once its wait is over."""
    start = await feed(api)
    body = await feed(api, after=start["last_seq"], wait=0.3)
    assert body == {"events": [], "last_seq": start["last_seq"]}


@pytest.mark.parametrize("wait", ["-1", "61", "nan", "x"])
async def test_feed_wait_out_of_range_is_400(api: Api, wait: str) -> None:
    """wait is a number of seconds from 0 to 60."""
    status, body, _ = await api.request("GET", EVENTS, params={"wait": wait})
    assert (status, error_code(body)) == (400, "bad_request")


async def test_feed_needs_a_token(api: Api) -> None:
    """No token, no feed."""
    status, _, _ = await api.as_token(None).request("GET", EVENTS)
    assert status == 401


async def test_long_poll_wakes_up_on_a_commit_in_this_process(api: Api) -> None:
    """A waiting request returns with the event as soon as a write commits, not at its wait."""
    start = await feed(api)
    started = time.monotonic()
    waiting = asyncio.create_task(feed(api, after=start["last_seq"], wait=LONG_WAIT_S))
    await asyncio.sleep(0.2)  # let it start waiting (not needed for correctness)
    assert not waiting.done()
    await api.create("woke", {"k": "1"})
    body = await asyncio.wait_for(waiting, LONG_WAIT_S)
    assert summary(body["events"]) == [("woke", 1, "create")]
    assert time.monotonic() - started < LONG_WAIT_S / 2


@pytest.fixture
async def other_process(
    runtime: Runtime, tmp_path: Path, encryption_key: str
) -> AsyncIterator[Runtime]:
    """A second daemon's runtime on the same database, with its NOTIFY sender running."""
    settings = make_settings(tmp_path / "other", runtime.dsn, encryption_key)
    async with open_runtime(settings, runtime.dsn) as other:
        stop = asyncio.Event()
        notifier = asyncio.create_task(replication.notify_others(other, stop))
        yield other
        stop.set()
        await notifier


async def test_long_poll_wakes_up_on_a_commit_in_another_process(
    api: Api, other_process: Runtime
) -> None:
    """A write through another process wakes the waiter through LISTEN/NOTIFY."""
    from secretmirror.service import SecretService

    start = await feed(api)
    started = time.monotonic()
    waiting = asyncio.create_task(feed(api, after=start["last_seq"], wait=LONG_WAIT_S))
    await asyncio.sleep(0.2)
    admin = await _admin_principal(other_process)
    await SecretService(other_process).create(admin, "elsewhere", {"k": "1"})
    body = await asyncio.wait_for(waiting, LONG_WAIT_S)
    assert summary(body["events"]) == [("elsewhere", 1, "create")]
    assert time.monotonic() - started < LONG_WAIT_S / 2


async def _admin_principal(rt: Runtime) -> Any:
    from secretmirror.model import Principal

    admin_id = await rt.pool.fetchval("SELECT id::text FROM users WHERE name = 'admin'")
    return Principal(admin_id, "admin", "admin")


async def test_feed_never_skips_an_event_committed_late(api: Api, runtime: Runtime) -> None:
    """An event whose transaction commits after a later-numbered one is still delivered.

    A transaction takes a sequence number and stays open; another write commits a
    higher number meanwhile. The feed holds the later one back until the first
    commits, then returns both: a reader's position never passes an open write.
    """
    start = await feed(api)
    admin_id = await runtime.pool.fetchval("SELECT id FROM users WHERE name = 'admin'")
    conn: asyncpg.Connection = await asyncpg.connect(runtime.dsn)
    try:
        open_tx = conn.transaction()
        await open_tx.start()
        await conn.execute(
            "INSERT INTO events (secret_id, version, kind, actor, name, owner, private) "
            "VALUES ($1, 1, 'create', 'admin', 'slow', $2, false)",
            uuid.uuid4(),
            admin_id,
        )
        await api.create("fast", {"k": "1"})
        held = await feed(api, after=start["last_seq"], wait=0.3)
        assert held == {"events": [], "last_seq": start["last_seq"]}
        await open_tx.commit()
    finally:
        with contextlib.suppress(Exception):
            await conn.close()
    body = await feed(api, after=start["last_seq"], wait=5)
    assert summary(body["events"]) == [("slow", 1, "create"), ("fast", 1, "create")]


async def test_deleted_history_is_private_to_who_could_see_it(api: Api) -> None:
    """A deleted private secret's history is its owner's; others get 404."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    mine = await alice.create("gone", {"k": "1"}, private=True)
    await alice.request("DELETE", f"{SECRETS}/{mine['id']}")
    path = f"{SECRETS}/by-name/gone/history"
    body = await get_ok(alice, path, deleted="true")
    assert [i["kind"] for i in body["items"]] == ["create", "delete"]
    status, _, _ = await api.request("GET", path, params={"deleted": "true"})
    assert status == 404


async def test_name_prefix_matches_exactly_the_names_starting_with_it(api: Api) -> None:
    """A prefix selects by bytes: no neighbour in sort order slips in, with or without values."""
    for name in ("ap", "app-", "app-x", "app-x.y", "app.x", "app_x", "app0", "APP-x"):
        await api.create(name, {"k": name})
    for params in ({}, {"values": "true"}):
        page = await get_ok(api, SECRETS, name_prefix="app-", **params)
        assert [i["name"] for i in page["items"]] == ["app-", "app-x", "app-x.y"]


async def scoped_token(api: Api, names: list[str], actions: list[str]) -> Api:
    status, body, _ = await api.request(
        "POST",
        "/api/v1/tokens",
        json={
            "name": f"scoped-{uuid.uuid4().hex[:8]}",
            "scopes": [{"names": names, "actions": actions}],
        },
    )
    assert status == 201, body
    return api.as_token(body["token"])


async def test_feed_leaves_out_secrets_outside_the_tokens_list_scope(api: Api) -> None:
    """A token scoped to app-* (list) sees only app-* events; a read-only scope sees none."""
    await api.create("app-db", {"k": "1"})
    await api.create("ci-deploy", {"k": "1"})
    listing = await scoped_token(api, ["app-*"], ["list"])
    reading = await scoped_token(api, ["app-*", "ci-*"], ["read"])
    assert summary((await feed(listing, after=0))["events"]) == [("app-db", 1, "create")]
    assert (await feed(reading, after=0))["events"] == []


async def test_bulk_read_needs_the_read_scope(api: Api) -> None:
    """values=true returns only the secrets the token may read; a list-only scope gets none."""
    await api.create("app-db", {"k": "app"})
    await api.create("ci-deploy", {"k": "ci"})
    reading = await scoped_token(api, ["app-*"], ["read"])
    listing = await scoped_token(api, ["app-*", "ci-*"], ["list"])
    items = (await get_ok(reading, SECRETS, values="true"))["items"]
    assert [(i["name"], i["values"]) for i in items] == [("app-db", {"k": "app"})]
    assert (await get_ok(listing, SECRETS, values="true"))["items"] == []


async def test_a_restart_storm_of_connections_is_queued_not_dropped(
    tmp_path: Path, encryption_key: str
) -> None:
    """300 clients connecting at once all complete their handshake before the daemon accepts.

    With the listen queue at 128, the kernel dropped the handshakes past it and each of
    those clients waited out a 1 s SYN retransmit: a restart storm ran in whole seconds.
    The handshake is the kernel's work alone (nothing accepts here), so a loaded machine
    does not slow it: 0.9 s is the retransmit, not a performance limit.
    """
    settings = make_settings(
        tmp_path, "postgresql://unused/db", encryption_key, listen=f"127.0.0.1:{free_port()}"
    )
    listener = bind_listener(settings)  # listening, and nothing accepts yet
    clients: list[socket.socket] = []
    try:
        poller = select.poll()
        for _ in range(300):
            client = socket.socket()
            client.setblocking(False)
            clients.append(client)
            client.connect_ex(listener.getsockname())
            poller.register(client, select.POLLOUT)
        connected: set[int] = set()
        deadline = time.monotonic() + 0.9
        while len(connected) < len(clients) and time.monotonic() < deadline:
            connected.update(fd for fd, _ in poller.poll(50))
        assert len(connected) == len(clients)
        assert all(c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0 for c in clients)
    finally:
        for client in clients:
            client.close()
        listener.close()
