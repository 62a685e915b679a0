"""Mirrors end to end (spec section 16): a daemon process with four mirrors at once.

A file mirror (by id, private secrets too, ``web-*`` excluded), an aws mirror
on moto (by name, ``app-*`` and ``db-*``), a hashicorp mirror on OpenBao (by
name, ``app-*`` and ``svc-*``, ``on_delete = "retain"``) and a gcp mirror on
the fake (by id, ``db-*``, ``svc-*`` and ``web-*``), beside a file backup.

The load keeps an exact model: every committed state of every secret, in
order. A request that got no answer (the daemon was killed under it) is
resolved by reading the secret back before its client touches it again
(operations on one secret never overlap, so the read shows whether it
committed). Names are reused only once the write that freed them was
acknowledged, so the holders of a name are known in commit order. What each
mirror must hold is computed from that model alone and compared with what the
providers hold, read with their own APIs (``tests/mirror_readers.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from secretmirror.mirrors import Mirror
from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.gcpfake import PROJECT, GcpFake, gcp_settings
from tests.mirror_readers import Reading, read_aws, read_file_store, read_gcp, read_vault
from tests.moto import aws_settings, secrets_client
from tests.openbao import OpenBao, bao_settings
from tests.stores.hashicorp import unique_prefix
from tests.test_replication_e2e import (
    daemons,  # noqa: F401 (a fixture)
    deployment_id,
    key,  # noqa: F401 (a fixture)
    new_daemon,
    status,
    store_env,
    until,
)

pytestmark = pytest.mark.acceptance

MOUNT = "secret"
OPS = 1000
CLIENTS = 8
KILLS = 3
#: Name prefixes the load draws from: each mirror selects a different mix of them.
PREFIXES = ("app-", "db-", "svc-", "web-", "ops-")

RULES = {
    "files": Mirror("files", exclude=("web-*",), include_private=True),
    "team": Mirror("team", include=("app-*", "db-*"), by_name=True),
    "vault": Mirror("vault", include=("app-*", "svc-*"), by_name=True, retain=True),
    "gcp": Mirror("gcp", include=("db-*", "svc-*", "web-*")),
}


@dataclass
class Places:
    """Where the daemon's stores are, for its environment and for the readers."""

    tmp: Path
    moto: str
    aws_prefix: str
    bao: OpenBao
    vault_prefix: str
    gcp: GcpFake
    gcp_key: Path
    gcp_prefix: str

    @property
    def backup_dir(self) -> Path:
        return self.tmp / "backup"

    @property
    def files_dir(self) -> Path:
        return self.tmp / "mirror-files"

    def env(self) -> dict[str, str]:
        globs = {
            name: {
                "include": ",".join(rule.include),
                "exclude": ",".join(rule.exclude),
                "include_private": str(rule.include_private).lower(),
                "naming": "name" if rule.by_name else "id",
                "on_delete": "retain" if rule.retain else "delete",
            }
            for name, rule in RULES.items()
        }
        for rule in globs.values():
            if not rule["exclude"]:
                del rule["exclude"]
        aws = aws_settings(self.moto, self.aws_prefix, max_writes_per_s=5000)
        gcp = gcp_settings(self.gcp.url, self.gcp_key, self.gcp_prefix, max_writes_per_s=5000)
        vault = bao_settings(self.bao, self.vault_prefix, mount=MOUNT)
        return {
            **store_env("backup", {"type": "file", "path": self.backup_dir}),
            **store_env(
                "mirrors__files", {"type": "file", "path": self.files_dir, **globs["files"]}
            ),
            **store_env("mirrors__team", {"type": "aws", **aws, **globs["team"]}),
            **store_env("mirrors__vault", {"type": "hashicorp", **vault, **globs["vault"]}),
            **store_env("mirrors__gcp", {"type": "gcp", **gcp, **globs["gcp"]}),
            # moto is not safe for concurrent creates: few deliveries in flight per target.
            "SECRETMIRROR_REPLICATION__CONCURRENCY": "4",
        }


@pytest.fixture
def places(
    tmp_path: Path,
    moto_server: str,
    aws_prefix: str,
    openbao: OpenBao,
    gcp_fake_clean: GcpFake,
    gcp_key_file: Path,
    gcp_prefix: str,
) -> Places:
    return Places(
        tmp_path,
        moto_server,
        aws_prefix,
        openbao,
        unique_prefix(),
        gcp_fake_clean,
        gcp_key_file,
        gcp_prefix,
    )


# -- the model ---------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """One committed version of a secret (``values`` None: deleted)."""

    version: int
    name: str
    private: bool
    values: dict[str, str] | None

    @property
    def live(self) -> bool:
        return self.values is not None

    def shared_name(self) -> str | None:
        """The shared name this version holds (a private or deleted one holds none)."""
        return self.name if self.live and not self.private else None


@dataclass
class Model:
    """Every committed state of every secret, and each shared name's holders in order."""

    history: dict[str, list[State]] = field(default_factory=dict)
    holders: dict[str, list[str]] = field(default_factory=dict)
    free_names: list[str] = field(default_factory=list)

    def commit(self, sid: str, state: State) -> None:
        states = self.history.setdefault(sid, [])
        before = states[-1].shared_name() if states else None
        assert not states or state.version == states[-1].version + 1, (sid, state)
        states.append(state)
        after = state.shared_name()
        if after is not None and after != before:
            self.holders.setdefault(after, []).append(sid)
        if before is not None and before != after:
            self.free_names.append(before)

    def final(self) -> dict[str, State]:
        return {sid: states[-1] for sid, states in self.history.items() if states[-1].live}

    # What each mirror must hold, from the model alone.

    def by_id(self, rule: Mirror) -> dict[str, tuple[int, dict[str, str]]]:
        return {
            sid: (s.version, s.values)
            for sid, s in self.final().items()
            if s.values is not None and rule.selects(s.name, s.private)
        }

    def by_name(self, rule: Mirror) -> dict[str, dict[str, str]]:
        if not rule.retain:
            return {
                s.name: s.values
                for s in self.final().values()
                if s.values is not None and rule.selects(s.name, s.private)
            }
        # retain: every name a selected secret held keeps the values of its last holder's
        # last version under that name.
        kept: dict[str, dict[str, str]] = {}
        for name, holders in self.holders.items():
            if not rule.selects(name, False):
                continue
            held = [s for s in self.history[holders[-1]] if s.shared_name() == name]
            assert held[-1].values is not None
            kept[name] = held[-1].values
        return kept


class Client:
    """The load's HTTP side: retries while the daemon is down, None for no answer."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session
        self.unknown = 0

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any] | None:
        for _ in range(1200):
            try:
                async with self.session.request(method, self.url + path, json=body) as resp:
                    data = await resp.json() if resp.content_type == "application/json" else None
                    return resp.status, data
            except aiohttp.ClientConnectorError:
                await asyncio.sleep(0.05)  # not connected (the daemon is down): nothing sent
            except (aiohttp.ClientError, TimeoutError):
                self.unknown += 1
                return None  # sent, no answer: it may or may not have committed
        raise AssertionError(f"the daemon stayed unreachable: {method} {path}")

    async def read(self, method: str, path: str) -> tuple[int, Any]:
        """A read, repeated until it is answered (reads change nothing)."""
        while True:
            result = await self.call(method, path)
            if result is not None:
                return result


def _state(body: dict[str, Any]) -> State:
    return State(body["version"], body["name"], body["private"], body["values"])


class Load:
    """Random creates, updates, renames, privatizations and deletes from several clients."""

    def __init__(self, client: Client, model: Model, seed: int = 16) -> None:
        self.client = client
        self.model = model
        self.rng = random.Random(seed)
        self.busy: set[str] = set()
        self.counter = 0
        self.done = 0
        self.failures: list[tuple[str, int, Any]] = []
        self.kinds: dict[str, int] = {}

    def _fresh_name(self) -> str:
        if self.model.free_names and self.rng.random() < 0.3:
            # A name another secret just left (acknowledged): reuse in commit order.
            return self.model.free_names.pop(self.rng.randrange(len(self.model.free_names)))
        self.counter += 1
        return f"{self.rng.choice(PREFIXES)}{self.counter}"

    def _values(self) -> dict[str, str]:
        self.counter += 1
        return {"v": secrets.token_hex(6), "n": str(self.counter)}

    async def run(self, ops: int, clients: int) -> None:
        left = [ops]

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                await self.step()
                self.done += 1

        await asyncio.gather(*(worker() for _ in range(clients)))

    async def step(self) -> None:
        idle = [sid for sid, h in self.model.history.items() if h[-1].live and sid not in self.busy]
        roll = self.rng.random()
        if len(idle) < 10 or roll < 0.25:
            await self.create()
            return
        sid = self.rng.choice(idle)
        self.busy.add(sid)
        try:
            await self.change(sid, roll)
        finally:
            self.busy.discard(sid)

    async def create(self) -> None:
        name, values = self._fresh_name(), self._values()
        self.kinds["create"] = self.kinds.get("create", 0) + 1
        result = await self.client.call("POST", "/api/v1/secrets", {"name": name, "values": values})
        if result is None:
            # Resolve: the name is ours (fresh, or freed and popped), unless the private
            # secret that freed it was made shared again meanwhile and took it back (the
            # 409 below): a secret of that name with these values is this create's.
            code, body = await self.client.read(
                "GET", f"/api/v1/secrets/by-name/{name}?private=false"
            )
            if code == 404:
                self.model.free_names.append(name)
                return
            assert code == 200, body
            if (body["values"], body["version"]) != (values, 1):
                assert body["id"] in self.model.history, body  # a known one took it back
                return
            result = (201, body)
        code, body = result
        if code == 409:  # a reused name a secret made shared again took meanwhile
            return
        if code != 201:
            self.failures.append(("create", code, body))
            return
        self.model.commit(body["id"], _state(body))

    async def change(self, sid: str, roll: float) -> None:
        current = self.model.history[sid][-1]
        patch: dict[str, Any] = {}
        if roll < 0.60:
            kind, patch = "update", {"values": self._values()}
        elif roll < 0.77:
            kind, patch = "rename", {"name": self._fresh_name()}
            if self.rng.random() < 0.3:
                patch["values"] = self._values()  # a rename with new values
        elif roll < 0.85:
            kind, patch = "private", {"private": not current.private}
        else:
            kind = "delete"
        if patch.get("name") == current.name and "values" not in patch:
            self.model.free_names.append(current.name)  # still free (or still this one's)
            return  # renaming to its own name is no change
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if kind == "delete":
            expected = State(current.version + 1, current.name, current.private, None)
            result = await self.client.call("DELETE", f"/api/v1/secrets/{sid}")
            ok = 204
        else:
            merged = {**(current.values or {}), **patch.get("values", {})}
            expected = State(
                current.version + 1,
                patch.get("name", current.name),
                patch.get("private", current.private),
                merged,
            )
            result = await self.client.call("PATCH", f"/api/v1/secrets/{sid}", patch)
            ok = 200
        if result is not None and result[0] == 404 and kind == "delete":
            result = None  # aiohttp resends a DELETE whose connection dropped: resolve it
        if result is None:
            code, body = await self.client.read("GET", f"/api/v1/secrets/{sid}")
            if code == 404:
                assert kind == "delete", (sid, kind)
                self.model.commit(sid, expected)
            else:
                assert code == 200, body
                got = _state(body)
                assert got in (current, expected), (sid, got, current, expected)
                if got == expected:
                    self.model.commit(sid, expected)
                elif "name" in patch:
                    self.model.free_names.append(patch["name"])
            return
        code, body = result
        if code == 409:  # NameTaken: nothing changed
            if "name" in patch:
                self.model.free_names.append(patch["name"])
            return
        if code != ok:
            self.failures.append((kind, code, body))
            return
        if kind != "delete":
            assert _state(body) == expected, (body, expected)
        self.model.commit(sid, expected)


# -- helpers -----------------------------------------------------------------------


async def drained(daemon: DaemonProcess) -> bool:
    body = await status(daemon)
    return all(t["pending"] == 0 for t in body["replication"].values())


async def api_truth(client: Client) -> dict[str, State]:
    """Every secret the API lists (private ones included: the admin owns them)."""
    found: dict[str, State] = {}
    cursor = ""
    while True:
        path = "/api/v1/secrets?values=true&limit=500" + (f"&cursor={cursor}" if cursor else "")
        code, body = await client.read("GET", path)
        assert code == 200, body
        found.update({item["id"]: _state(item) for item in body["items"]})
        if not body["next_cursor"]:
            return found
        cursor = body["next_cursor"]


async def readings(places: Places, deployment: str, raw_key: bytes) -> dict[str, Reading]:
    return {
        "backup": await read_file_store(places.backup_dir, deployment, raw_key),
        "files": await read_file_store(places.files_dir, deployment, raw_key),
        "team": await read_aws(places.moto, places.aws_prefix, deployment),
        "vault": await read_vault(places.bao, MOUNT, places.vault_prefix, deployment),
        "gcp": await read_gcp(
            places.gcp.url, places.gcp_key, PROJECT, places.gcp_prefix, deployment
        ),
    }


def by_id(reading: Reading) -> dict[str, tuple[int, dict[str, str]]]:
    return {k: (h.version, h.values) for k, h in reading.entries.items() if h.values is not None}


@contextlib.asynccontextmanager
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=aiohttp.ClientTimeout(total=30),
    ) as s:
        yield s


# -- tests -------------------------------------------------------------------------


async def test_four_mirrors_hold_their_selections_through_kill_9(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    places: Places,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """1,000 random writes from 8 clients, kill -9 three times: each mirror ends holding
    exactly its selection, by id or by name, with the last values; ``retain`` kept every
    name a selected secret left, with the values it had when it left."""
    daemon = new_daemon(daemons, tmp_path, database, key, places.env())
    await asyncio.to_thread(daemon.start)
    model = Model()
    started = time.monotonic()
    async with session() as http:
        client = Client(daemon.url, http)
        load = Load(client, model)
        kills: list[int] = []

        async def killer() -> None:
            for n in range(1, KILLS + 1):
                while load.done < OPS * n // (KILLS + 1):
                    await asyncio.sleep(0.02)  # polls the load's progress
                await asyncio.to_thread(daemon.kill)
                kills.append(load.done)
                await asyncio.to_thread(daemon.start)

        await asyncio.gather(load.run(OPS, CLIENTS), killer())
        load_s = time.monotonic() - started
        await until(lambda: drained(daemon), 120, "every target to drain")
        drain_s = time.monotonic() - started - load_s
        truth = await api_truth(client)

    assert load.failures == [], load.failures[:5]
    assert len(kills) == KILLS, kills
    assert kills[-1] < OPS, kills
    assert all(load.kinds.get(k, 0) > 20 for k in ("create", "update", "rename", "delete"))
    assert load.kinds.get("private", 0) > 20, load.kinds
    # The API holds exactly the model's live secrets, as the model says.
    assert truth == model.final()
    body = await status(daemon)
    assert {t: s["dead"] for t, s in body["replication"].items()} == dict.fromkeys(
        body["replication"], 0
    )

    deployment = await deployment_id(database)
    held = await readings(places, deployment, base64.b64decode(key))
    assert all(not r.foreign for r in held.values()), {k: r.foreign for k, r in held.items()}
    everything = Mirror("backup", include_private=True)
    assert by_id(held["backup"]) == model.by_id(everything)
    assert by_id(held["files"]) == model.by_id(RULES["files"])
    assert by_id(held["gcp"]) == model.by_id(RULES["gcp"])
    assert held["team"].live() == model.by_name(RULES["team"])
    assert held["vault"].live() == model.by_name(RULES["vault"])
    assert {k: r.unrecorded for k, r in held.items() if r.unrecorded} == {}
    assert all(h.values is not None for h in held["vault"].entries.values())  # never deleted
    # The run exercised what the mirrors must get right.
    final = model.final()
    assert any(s.private for s in final.values())
    assert any(len(holders) > 1 for holders in model.holders.values())  # names reused
    retained = set(model.by_name(RULES["vault"])) - {s.name for s in final.values()}
    assert len(retained) > 10, retained
    print(
        f"\nmirrors e2e: {load.done} ops {load.kinds}, {client.unknown} unanswered, "
        f"kills after {kills} ops, load {load_s:.1f}s, drain {drain_s:.1f}s, "
        f"live {len(final)}, retained-only names {len(retained)}"
    )


async def test_a_foreign_entry_is_never_touched_and_dead_letters(
    tmp_path: Path,
    database: str,
    key: str,  # noqa: F811
    places: Places,
    daemons: list[DaemonProcess],  # noqa: F811
) -> None:
    """An AWS secret at the aws mirror's name for ``app-foreign`` that secretmirror did not
    make stays as it was; the delivery dead-letters with ``foreign_entry`` and status shows
    it; the other mirrors and the backup get the secret."""
    foreign_name = f"{places.aws_prefix}app-foreign"
    tags = [{"Key": "team", "Value": "payments"}]
    async with secrets_client(places.moto) as aws:
        await aws.create_secret(Name=foreign_name, SecretString='{"theirs": "1"}', Tags=tags)
        before = await aws.describe_secret(SecretId=foreign_name)
    daemon = new_daemon(daemons, tmp_path, database, key, places.env())
    await asyncio.to_thread(daemon.start)
    values = {"password": secrets.token_hex(8)}
    async with session() as http:
        client = Client(daemon.url, http)
        result = await client.call(
            "POST", "/api/v1/secrets", {"name": "app-foreign", "values": values}
        )
        assert result is not None
        assert result[0] == 201, result
        sid = result[1]["id"]

    async def dead_lettered() -> bool:
        body = await status(daemon)
        return bool(body["replication"]["team"]["dead"] >= 1) and all(
            t["pending"] == 0 for t in body["replication"].values()
        )

    await until(dead_lettered, 60, "the team delivery to dead-letter and the rest to drain")
    body = await status(daemon)
    assert body["replication"]["team"]["dead"] == 1
    assert [t for t, s in body["replication"].items() if s["dead"]] == ["team"]
    if "dead_reasons" in body["replication"]["team"]:
        assert body["replication"]["team"]["dead_reasons"] == {"foreign_entry": 1}
    dead = (await asyncio.to_thread(daemon.get, "/admin/v1/dead-letters"))["items"]
    assert [(d["target"], d["secret_id"], d["name"]) for d in dead] == [
        ("team", sid, "app-foreign")
    ]
    assert dead[0]["last_error"].startswith("foreign_entry"), dead[0]
    assert values["password"] not in dead[0]["last_error"]

    async with secrets_client(places.moto) as aws:
        after = await aws.describe_secret(SecretId=foreign_name)
        value = await aws.get_secret_value(SecretId=foreign_name)
    assert value["SecretString"] == '{"theirs": "1"}'
    assert after["Tags"] == tags
    assert after["VersionIdsToStages"] == before["VersionIdsToStages"]
    assert after.get("DeletedDate") is None

    deployment = await deployment_id(database)
    held = await readings(places, deployment, base64.b64decode(key))
    assert held["team"].entries == {}
    assert held["team"].foreign == {"app-foreign"}
    assert held["vault"].live() == {"app-foreign": values}
    assert by_id(held["files"]) == {sid: (1, values)}
    assert by_id(held["backup"]) == {sid: (1, values)}
    assert by_id(held["gcp"]) == {}  # not selected (app-*)
