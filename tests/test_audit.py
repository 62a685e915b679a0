"""The audit log (spec section 13): a record for every audited action and outcome, before
the response; never a value or a token; 503 when it cannot be written; the admin route,
the CLI, the JSON-lines file and retention. Black-box where it can be (a daemon
subprocess on real PostgreSQL); group commit and retention in-process.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from secretmirror import metrics, retention
from secretmirror.audit import ROW_SECRETS, AuditLog, Entry, Record
from secretmirror.queries import Q
from secretmirror.runtime import Runtime
from tests.blackbox import Http, cli, serve_daemon
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.pg import TestPostgres

SECRETS = "/api/v1/secrets"
CANARY = "canary-value-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
async def daemon(
    postgres: TestPostgres, template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("audit")
    env = {"SECRETMIRROR_AUDIT__FILE": str(base / "audit.jsonl")}
    async for found in serve_daemon(postgres, template, base / "data", env):
        yield found


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Http:
    return Http(daemon.url)


def audit_file(daemon: DaemonProcess) -> Path:
    return Path(daemon.env["SECRETMIRROR_AUDIT__FILE"])


def records(admin: Http, **params: str) -> list[dict[str, Any]]:
    """Every record matching ``params``, newest first, following the cursor."""
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = {"limit": "200", **params}
        if cursor:
            query["cursor"] = cursor
        status, page = admin("GET", "/admin/v1/audit", params=query)
        assert status == 200, page
        found += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return found


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_every_action_and_outcome_leaves_a_record_without_values_or_tokens(
    daemon: DaemonProcess, admin: Http
) -> None:
    """Each audited request leaves one record with its action, outcome and status; no record
    (in PostgreSQL or in the file) holds a value or a token."""
    reader_name = unique("rita")
    reader_id, reader_token = admin.user(reader_name, "reader")
    reader = admin.as_token(reader_token)
    name = unique("audited")
    created = admin.create(name, {"password": CANARY})
    sid = created["id"]
    admin.ok("GET", f"{SECRETS}/{sid}")
    admin.ok("PATCH", f"{SECRETS}/{sid}", {"values": {"password": CANARY + "2"}})
    admin.ok("GET", f"{SECRETS}/{sid}", params={"version": "1"})
    admin.ok("PATCH", f"{SECRETS}/{sid}", {"name": name + "-renamed"})
    admin.ok("GET", f"{SECRETS}/{sid}/history")
    reader("GET", f"{SECRETS}/{uuid.uuid4()}")  # not_found
    reader("POST", SECRETS, {"name": unique("no"), "values": {"k": CANARY}})  # denied
    admin("POST", SECRETS, {"name": "-bad-", "values": {"k": CANARY}})  # error (422)
    bad_token = "smt_" + "z" * 43
    admin.as_token(bad_token)("GET", f"{SECRETS}/{sid}")  # auth.failed
    admin.ok("PATCH", f"/api/v1/users/{reader_id}", {"role": "writer"})
    minted = admin.ok("POST", "/api/v1/tokens", {"name": "short-lived"})
    admin.ok("DELETE", f"/api/v1/tokens/{minted['id']}")
    job = admin.ok("POST", "/admin/v1/reconcile", {"mode": "verify"})
    admin("POST", f"/admin/v1/jobs/{job['id']}/cancel")
    assert admin("POST", f"/admin/v1/jobs/{uuid.uuid4()}/cancel")[0] == 404
    admin.ok("POST", "/admin/v1/dead-letters/retry")
    admin.ok("POST", "/admin/v1/keys/rotate")
    admin.ok("DELETE", f"{SECRETS}/{sid}")
    gone_id, _ = admin.user(unique("gone"), "reader")
    admin.ok("DELETE", f"/api/v1/users/{gone_id}")

    mine = records(admin, secret_id=sid)
    by_action = {(r["action"], r["outcome"], r["status"]) for r in mine}
    assert {
        ("secret.create", "ok", 201),
        ("secret.read", "ok", 200),
        ("secret.update", "ok", 200),
        ("secret.read_version", "ok", 200),
        ("secret.rename", "ok", 200),
        ("secret.history", "ok", 200),
        ("secret.delete", "ok", 204),
        ("auth.failed", "denied", 401),
    } <= by_action
    create = next(r for r in mine if r["action"] == "secret.create")
    assert (create["actor"], create["secret_name"]) == ("admin", name)
    assert create["token_id"]
    assert create["request_id"]
    assert create["remote_addr"] == "127.0.0.1"
    failed = next(r for r in mine if r["action"] == "auth.failed")
    assert (failed["actor"], failed["token_id"]) == (None, None)

    everything = records(admin, since=(datetime.now(UTC) - timedelta(minutes=10)).isoformat())
    outcomes = {(r["action"], r["outcome"]) for r in everything}
    assert {
        ("secret.read", "not_found"),
        ("secret.create", "denied"),
        ("secret.create", "error"),
        ("user.create", "ok"),
        ("user.update", "ok"),
        ("user.delete", "ok"),
        ("token.create", "ok"),
        ("token.revoke", "ok"),
        ("job.start", "ok"),
        ("job.cancel", "ok"),
        ("job.cancel", "not_found"),
        ("dead_letters.retry", "ok"),
        ("keys.rotate", "ok"),
    } <= outcomes

    secrets_seen = [ADMIN_TOKEN, reader_token, bad_token, minted["token"], CANARY]
    dump = json.dumps(everything)
    file_text = audit_file(daemon).read_text()
    for secret in secrets_seen:
        assert secret not in dump
        assert secret not in file_text


def test_file_sink_is_0600_and_holds_every_committed_record(
    daemon: DaemonProcess, admin: Http
) -> None:
    """audit.file: one JSON line per record, as the API returns it, mode 0600."""
    created = admin.create(unique("filed"), {"k": "v"})
    admin.ok("GET", f"{SECRETS}/{created['id']}")
    path = audit_file(daemon)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    from_api = {r["id"]: r for r in records(admin, secret_id=created["id"])}
    from_file = {r["id"]: r for r in lines if r["secret_id"] == created["id"]}
    assert from_file == from_api
    assert len(from_api) == 2


def test_bulk_read_leaves_one_record_per_secret_returned(admin: Http) -> None:
    """GET /secrets?values=true: a secret.read record for each secret in the answer."""
    prefix = unique("bulk")
    ids = {admin.create(f"{prefix}-{n}", {"k": "v"})["id"] for n in range(3)}
    body = admin.ok("GET", SECRETS, params={"values": "true", "name_prefix": prefix, "limit": "2"})
    returned = {item["id"] for item in body["items"]}
    assert len(returned) == 2
    for secret_id in ids:
        reads = records(admin, secret_id=secret_id, action="secret.read")
        assert len(reads) == (1 if secret_id in returned else 0)
    # A metadata listing is not audited.
    admin.ok("GET", SECRETS, params={"name_prefix": prefix})
    assert sum(len(records(admin, secret_id=i, action="secret.read")) for i in ids) == 2


def test_filters_and_cursor(admin: Http) -> None:
    """actor (also "via"), action, outcome and since filter; the cursor pages without gaps."""
    name = unique("worker")
    _, token = admin.user(name, "writer")
    worker = admin.as_token(token)
    minted = admin.as_token(admin.make_token(unique("for"), user=name))
    secret = worker.create(unique("w"), {"k": "v"})
    for _ in range(4):
        worker.ok("GET", f"{SECRETS}/{secret['id']}")
    minted.ok("GET", f"{SECRETS}/{secret['id']}")
    by_actor = records(admin, actor=name)
    assert {r["actor"] for r in by_actor} == {name, f"{name} via admin"}
    # its own token made with the one the admin made, the create, 4 + 1 reads
    assert len(by_actor) == 7
    reads = records(admin, actor=name, action="secret.read", limit="2")
    assert len(reads) == 5
    assert [r["id"] for r in reads] == sorted((r["id"] for r in reads), reverse=True)
    assert records(admin, actor=name, outcome="denied") == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert records(admin, actor=name, since=future) == []
    for params in ({"outcome": "maybe"}, {"action": "secret.peek"}, {"cursor": "x"}):
        assert admin("GET", "/admin/v1/audit", params=params)[0] == 400


def test_audit_route_is_admin_only(admin: Http) -> None:
    """A writer, and an admin's scoped token, get 403."""
    _, token = admin.user(unique("nosy"), "writer")
    assert admin.as_token(token)("GET", "/admin/v1/audit")[0] == 403
    scoped = admin.make_token(unique("s"), scopes=[{"names": ["*"], "actions": ["read"]}])
    assert admin.as_token(scoped)("GET", "/admin/v1/audit")[0] == 403


def test_cli_audit_filters(daemon: DaemonProcess, admin: Http) -> None:
    """`secretmirror audit --actor --secret --action --since -o json` and the table."""
    name = unique("clisecret")
    created = admin.create(name, {"k": "v"})
    admin.ok("GET", f"{SECRETS}/{created['id']}")
    out = cli(
        daemon.url, ADMIN_TOKEN, "audit", "--actor", "admin", "--secret", name,
        "--action", "secret.read", "--since", "1h", "-o", "json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert [(r["action"], r["secret_id"]) for r in found] == [("secret.read", created["id"])]
    table = cli(daemon.url, ADMIN_TOKEN, "audit", "--secret", created["id"])
    assert table.returncode == 0, table.stderr
    assert "secret.create" in table.stdout
    assert "secret.read" in table.stdout
    bad = cli(daemon.url, ADMIN_TOKEN, "audit", "--since", "yesterday-ish")
    assert bad.returncode == 2


async def test_unwritable_audit_log_fails_closed_with_503(
    daemon: DaemonProcess, admin: Http
) -> None:
    """With the audit table unwritable a read answers 503 without its values, and every
    change (a secret, a user, a token, a job, the dead letters, a key rotation) answers
    503 having changed nothing (a change and its record commit together); all work again
    once it is back."""
    created = admin.create(unique("closed"), {"k": CANARY})
    path = f"{SECRETS}/{created['id']}"
    refused = unique("x")
    user_id, user_token = admin.user(unique("kept"), "reader")
    minted = admin.ok("POST", "/api/v1/tokens", {"name": unique("kept")})
    conn = await asyncpg.connect(daemon.env["SECRETMIRROR_DATABASE_URL"])
    try:
        # A job that stays queued (no process runs it), so a cancel would change it.
        job = await conn.fetchrow(
            "INSERT INTO jobs (id, mode, status, owner) VALUES ($1, 'backup', 'queued', 'gone')"
            " RETURNING id::text",
            uuid.uuid4(),
        )
        jobs = await conn.fetchval("SELECT count(*) FROM jobs")
        await conn.execute("ALTER TABLE audit_log RENAME TO audit_log_away")
        try:
            status, body = await asyncio.to_thread(admin, "GET", path)
            assert (status, body["error"]["code"]) == (503, "unavailable")
            assert CANARY not in json.dumps(body)
            changes = [
                ("POST", SECRETS, {"name": refused, "values": {"k": "v"}}),
                ("PATCH", path, {"values": {"k": "changed"}}),
                ("PATCH", path, {"name": unique("renamed")}),
                ("DELETE", path, None),
                ("POST", "/api/v1/users", {"name": refused, "role": "reader"}),
                ("PATCH", f"/api/v1/users/{user_id}", {"disabled": True}),
                ("DELETE", f"/api/v1/users/{user_id}", None),
                ("POST", "/api/v1/tokens", {"name": refused}),
                ("DELETE", f"/api/v1/tokens/{minted['id']}", None),
                ("POST", "/admin/v1/reconcile", {"mode": "verify"}),
                ("POST", f"/admin/v1/jobs/{job['id']}/cancel", None),
                ("POST", "/admin/v1/dead-letters/retry", None),
                ("POST", "/admin/v1/keys/rotate", None),
            ]
            for method, where, sent in changes:
                status, body = await asyncio.to_thread(admin, method, where, sent)
                assert (status, body["error"]["code"]) == (503, "unavailable"), method
            # Not audited: a metadata listing still works.
            assert (await asyncio.to_thread(admin, "GET", SECRETS))[0] == 200
        finally:
            await conn.execute("ALTER TABLE audit_log_away RENAME TO audit_log")
        events = await conn.fetchval(
            "SELECT count(*) FROM events WHERE secret_id = $1", uuid.UUID(created["id"])
        )
        assert events == 1  # the create only
        # No job started (a verify, a rekey), the queued one not cancelled.
        assert await conn.fetchval("SELECT count(*) FROM jobs") == jobs
        assert (
            await conn.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job["id"]))
            == "queued"
        )
    finally:
        await conn.close()
    status, body = await asyncio.to_thread(admin, "GET", path)
    assert (status, body["name"], body["version"]) == (200, created["name"], 1)
    assert body["values"] == {"k": CANARY}
    assert (await asyncio.to_thread(admin, "GET", f"{SECRETS}/by-name/{refused}"))[0] == 404
    assert admin.create(refused, {"k": "v"})["version"] == 1
    # The user is still there and enabled, its token and the admin's work, no new ones.
    users = {u["name"]: u for u in admin.ok("GET", "/api/v1/users")["items"]}
    assert refused not in users
    assert [u["disabled"] for u in users.values() if u["id"] == user_id] == [False]
    assert admin.as_token(user_token)("GET", SECRETS)[0] == 200
    assert admin.as_token(minted["token"])("GET", SECRETS)[0] == 200
    assert refused not in {t["name"] for t in admin.ok("GET", "/api/v1/tokens")["items"]}
    cancelled = admin.ok("POST", f"/admin/v1/jobs/{job['id']}/cancel")
    assert cancelled["status"] == "cancelled"
    assert "audit.write_failed" in daemon.log_path.read_text()


# -- in-process: group commit and retention ---------------------------------------------


def _record(n: int, at: datetime | None = None) -> Record:
    return Record(
        at=at or datetime.now(UTC),
        actor="bench",
        token_id=None,
        action="secret.read",
        secret_id=str(uuid.uuid4()),
        secret_name=f"s{n}",
        outcome="ok",
        status=200,
        remote_addr="127.0.0.1",
        request_id=f"r{n}",
    )


def _batches() -> float:
    for metric in metrics.audit_batch_size.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                return sample.value
    return 0.0


async def test_concurrent_records_are_group_committed(runtime: Runtime, tmp_path: Path) -> None:
    """64 concurrent writers: every record committed, in a few multi-row inserts."""
    log = AuditLog(runtime.pool, tmp_path / "audit.jsonl")
    before = _batches()
    await asyncio.gather(*(log.write(Entry.of(_record(n))) for n in range(64)))
    await log.close()
    batches = _batches() - before
    assert 1 <= batches <= 8
    found = "SELECT count(*) FROM audit_records WHERE actor = 'bench'"
    assert await runtime.pool.fetchval(found) == 64
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 64
    assert stat.S_IMODE(os.stat(tmp_path / "audit.jsonl").st_mode) == 0o600


async def test_a_batch_of_entries_keeps_each_records_fields_and_order(
    runtime: Runtime, tmp_path: Path
) -> None:
    """Entries of one request each (one with 3 secrets) in one insert: a record per secret,
    in the order written, each with its own request's fields, the file the same."""
    log = AuditLog(runtime.pool, tmp_path / "audit.jsonl")
    single = [_record(n) for n in range(2)]
    ids = [str(uuid.uuid4()) for _ in range(3)]
    bulk = Entry(
        at=datetime.now(UTC) - timedelta(seconds=5),
        actor="bench-bulk",
        token_id=str(uuid.uuid4()),
        action="secret.read",
        outcome="ok",
        status=200,
        remote_addr="10.0.0.9",
        request_id="bulk1",
        secrets=[(ids[0], "b0"), (ids[1], "b1"), (ids[2], "b2")],
    )
    await asyncio.gather(
        log.write(Entry.of(single[0])), log.write(bulk), log.write(Entry.of(single[1]))
    )
    await log.close()
    expected = [single[0], *bulk.records(), single[1]]
    rows = await runtime.pool.fetch(
        "SELECT id, at, actor, token_id::text, action, secret_id::text, secret_name, outcome,"
        " status, remote_addr, request_id FROM audit_records WHERE secret_id = ANY($1::uuid[])"
        " ORDER BY id",
        [r.secret_id for r in expected],
    )
    assert [Record(**{k: v for k, v in dict(r).items() if k != "id"}) for r in rows] == expected
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert lines == [r.to_json(row["id"]) for r, row in zip(expected, rows, strict=True)]
    # The bulk read's three records are one row (migration 0009), the others one each.
    rows_of = "SELECT count(*) FROM audit_log WHERE request_id = $1"
    assert [await runtime.pool.fetchval(rows_of, r) for r in ("bulk1", "r0", "r1")] == [1, 1, 1]


def _bulk(count: int, actor: str = "bench-bulk") -> Entry:
    return Entry(
        at=datetime.now(UTC),
        actor=actor,
        token_id=None,
        action="secret.read",
        outcome="ok",
        status=200,
        remote_addr="127.0.0.1",
        request_id=uuid.uuid4().hex,
        secrets=[(str(uuid.uuid4()), f"b{n}") for n in range(count)],
    )


async def _listed(runtime: Runtime, page: int, **filters: Any) -> list[asyncpg.Record]:
    """Every record ``Q.audit_list`` finds for ``filters``, ``page`` at a time by the cursor."""
    found: list[asyncpg.Record] = []
    before = None
    while True:
        params = dict.fromkeys(("actor", "secret_id", "secret_name", "action", "outcome"))
        params.update(since=None, until=None, **filters)
        rows = await runtime.pool.fetch(Q.audit_list, **params, before=before, limit=page)
        found += rows
        if len(rows) < page:
            return found
        before = rows[-1]["id"]


async def test_a_request_with_more_records_than_a_row_holds_takes_several_rows(
    runtime: Runtime, tmp_path: Path
) -> None:
    """ROW_SECRETS + 6 records: two rows; every record listed once, in order, with the id
    the file has; the ids step by ROW_SECRETS between rows, as the sequence does."""
    step = "SELECT increment_by FROM pg_sequences WHERE sequencename = 'audit_log_id_seq'"
    assert await runtime.pool.fetchval(step) == ROW_SECRETS
    log = AuditLog(runtime.pool, tmp_path / "audit.jsonl")
    entry = _bulk(ROW_SECRETS + 6, actor="bench-big")
    await log.write(entry)
    await log.close()
    rows = await runtime.pool.fetch("SELECT id FROM audit_log WHERE actor = 'bench-big'")
    assert len(rows) == 2
    listed = await _listed(runtime, 500, actor="bench-big")
    assert [r["secret_name"] for r in reversed(listed)] == [n for _, n in entry.secrets]
    lines = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["id"] for r in reversed(listed)] == [line["id"] for line in lines]
    assert len({r["id"] for r in listed}) == ROW_SECRETS + 6


async def test_the_cursor_pages_through_rows_of_one_and_of_many_records(
    runtime: Runtime,
) -> None:
    """A row written as before migration 0009 (one record, secret_id) and a 3-record row:
    one record per page, newest first, none twice; a secret_id inside a row finds its record."""
    actor = unique("mixed")
    legacy = str(uuid.uuid4())
    await runtime.pool.execute(
        "INSERT INTO audit_log (at, actor, action, secret_id, secret_name, outcome, status)"
        " VALUES (now(), $1, 'secret.read', $2, 'legacy', 'ok', 200)",
        actor,
        legacy,
    )
    entry = _bulk(3, actor=actor)
    await AuditLog(runtime.pool).write(entry)
    listed = await _listed(runtime, 1, actor=actor)
    assert [r["secret_name"] for r in listed] == ["b2", "b1", "b0", "legacy"]
    assert [r["id"] for r in listed] == sorted((r["id"] for r in listed), reverse=True)
    middle = entry.secrets[1][0]
    assert [r["secret_name"] for r in await _listed(runtime, 10, secret_id=middle)] == ["b1"]
    assert [r["secret_id"] for r in await _listed(runtime, 10, secret_id=legacy)] == [legacy]
    found = await _listed(runtime, 10, actor=actor, secret_name="b0")
    assert [r["secret_id"] for r in found] == [entry.secrets[0][0]]


async def test_retention_purges_records_older_than_keep_days(runtime: Runtime) -> None:
    """audit.keep_days (365 by default): older records go, newer ones stay."""
    log = AuditLog(runtime.pool)
    old = _record(1, datetime.now(UTC) - timedelta(days=400))
    await log.write(Entry.of(old))
    await log.write(Entry.of(_record(2)))
    await log.write(replace(_bulk(3), at=datetime.now(UTC) - timedelta(days=400)))
    assert await retention.purge_audit_once(runtime) == 4  # records, in two rows
    names = await runtime.pool.fetch("SELECT secret_name FROM audit_records WHERE actor = 'bench'")
    assert [r["secret_name"] for r in names] == ["s2"]


def test_a_filter_no_record_can_hold_matches_nothing(admin: Http) -> None:
    """NUL in actor or secret_name is in no record: an empty page, as the secrets list does."""
    for params in ({"actor": "admin\x00"}, {"secret_name": "a\x00b"}):
        status, page = admin("GET", "/admin/v1/audit", params=params)
        assert (status, page) == (200, {"items": [], "next_cursor": None})
    assert admin("GET", "/admin/v1/audit", params={"actor": "a\x00", "since": "x"})[0] == 400
