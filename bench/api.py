"""The core API benchmark: a real ``secretmirror serve`` subprocess against real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import secrets
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from tests.blackbox import log_lines

from bench._common import check, knob, measured, ratio, run_standalone
from bench._harness import (
    ADMIN_TOKEN,
    Api,
    Cpu,
    Daemon,
    OpError,
    Postgres,
    RssPeak,
    fetch,
    fetchval,
    postgres,
    run_ops,
    values_for,
)
from secretmirror import crypto
from secretmirror.audit import Pending
from secretmirror.crypto import secret_aad
from secretmirror.model import canonical
from secretmirror.queries import Q

NAME = "api"
CONCURRENCY = (1, 32)
DURATION_S = knob("SECRETMIRROR_BENCH_DURATION_S", 5.0, 1.0)
RSS_SECRETS = knob("SECRETMIRROR_BENCH_API_SECRETS", 10_000, 500)
API_OPS = ("create", "get", "update", "list")
RAW_OPS = ("create", "create_sql", "get", "get_sql", "update", "list")
#: The database's connections but the one asking.
BACKENDS = "SELECT count(*) - 1 FROM pg_stat_activity WHERE datname = current_database()"
#: The raw variants with no API counterpart, printed below the table.
RAW_EXTRA = {"create_sql": "create without crypto", "get_sql": "get without decrypting"}


def new_password(n: int, tag: str) -> str:
    """A password no secret had before this phase (``tag``): an update that changes nothing
    writes nothing, and would flatter the figure."""
    return f"{values_for(n)['password'][:20]}{tag}{n}"


def api_ops(api: Api, ids: list[str], tag: str) -> dict[str, Any]:
    """The four API operations as ``run_ops`` calls them."""
    seq = itertools.count()

    async def create(_worker: int, _n: int) -> None:
        n = next(seq)
        ids.append(await api.create(f"bench-{tag}-{n}", n))

    async def get(_worker: int, _n: int) -> None:
        await api.call("GET", f"/api/v1/secrets/{random.choice(ids)}", parse=False)

    async def update(_worker: int, n: int) -> None:
        await api.update(ids[n % len(ids)], {"password": new_password(n, tag)})

    async def list_(_worker: int, _n: int) -> None:
        await api.call("GET", "/api/v1/secrets?limit=100", parse=False)

    return {"create": create, "get": get, "update": update, "list": list_}


class RawOps:
    """The API's SQL work per request, straight through asyncpg, one connection per client."""

    def __init__(
        self,
        conns: list[asyncpg.Connection],
        keyring: crypto.Keyring,
        hash_key: bytes,
        deployment_id: str,
        ids: list[str],
        run_tag: str,
    ) -> None:
        self.conns = conns
        self.keyring = keyring
        self.hash_key = hash_key
        self.deployment_id = deployment_id
        self.ids = ids
        self.run_tag = run_tag
        self.seq = itertools.count()
        self.node = f"bench:{os.getpid()}"
        # For create_sql: one ciphertext and hash computed once (SQL cost only).
        blob = canonical(values_for(0))
        self.fixed_snapshot = keyring.encrypt(blob, secret_aad(str(uuid.uuid4()), 1))
        self.fixed_hash = crypto.content_hash(hash_key, "fixed", blob)
        #: What a change writes besides the secret: the outbox of the sql primary in the main
        #: database, no backup.
        self.outbox = {
            "outbox_deployment": deployment_id,
            "targets": [],
            "inline": [],
            "token": self.node,
            "lease_s": 6.0,
        }
        #: The audit record a change writes in its own statement, as through the API.
        self.audited = Pending("127.0.0.1", None, {"secret.create": 201, "secret.update": 200})

    async def _auth(self, conn: asyncpg.Connection) -> Any:
        row = await conn.fetchrow(Q.authenticate, crypto.token_hash(ADMIN_TOKEN))
        if row is None:
            raise OpError("authenticate found no token")
        return row

    async def _create(self, worker: int, encrypt: bool) -> None:
        conn = self.conns[worker]
        principal = await self._auth(conn)
        n = next(self.seq)
        secret_id = str(uuid.uuid4())
        if encrypt:
            blob = canonical(values_for(n))
            snapshot = self.keyring.encrypt(blob, secret_aad(secret_id, 1))
            content_hash = crypto.content_hash(self.hash_key, secret_id, blob)
        else:
            snapshot, content_hash = self.fixed_snapshot, self.fixed_hash
        args = Q.args(
            Q.secret_create,
            secret_id=secret_id,
            name=f"bench-raw-{self.run_tag}-{n}",
            owner=principal["user_id"],
            private=False,
            hash=content_hash,
            actor=principal["name"],
            snapshot=snapshot,
            **self.outbox,
            **self.audited.params("secret.create", str(principal["token_id"])),
        )
        await conn.fetchrow(Q.secret_create, *args)

    async def create(self, worker: int, _n: int) -> None:
        await self._create(worker, encrypt=True)

    async def create_sql(self, worker: int, _n: int) -> None:
        await self._create(worker, encrypt=False)

    async def _read(self, worker: int, secret_id: str, decrypt: bool) -> Any:
        """``authenticate`` + ``secret_get_with_value`` (+ decrypting): the principal, the row
        and the values (None without decrypting)."""
        conn = self.conns[worker]
        principal = await self._auth(conn)
        row = await conn.fetchrow(Q.secret_get_with_value, uuid.UUID(secret_id), self.deployment_id)
        if row is None:
            raise OpError(f"no such secret: {secret_id}")
        values = None
        if decrypt:
            aad = secret_aad(secret_id, row["version"])
            values = json.loads(self.keyring.decrypt(row["ciphertext"], aad))
        return principal, row, values

    async def get(self, worker: int, _n: int) -> None:
        await self._read(worker, self.ids[random.randrange(len(self.ids))], decrypt=True)

    async def get_sql(self, worker: int, _n: int) -> None:
        await self._read(worker, self.ids[random.randrange(len(self.ids))], decrypt=False)

    async def update(self, worker: int, n: int) -> None:
        secret_id = self.ids[n % len(self.ids)]
        principal, row, current = await self._read(worker, secret_id, decrypt=True)
        current["password"] = new_password(n, "raw" + self.run_tag)
        blob = canonical(current)
        version = row["version"] + 1
        snapshot = self.keyring.encrypt(blob, secret_aad(secret_id, version))
        args = Q.args(
            Q.secret_change,
            secret_id=secret_id,
            version_read=row["version"],
            name=row["name"],
            private=row["private"],
            hash=crypto.content_hash(self.hash_key, secret_id, blob),
            kind="update",
            actor=principal["name"],
            snapshot=snapshot,
            **self.outbox,
            **self.audited.params("secret.update", str(principal["token_id"])),
        )
        changed = await self.conns[worker].fetchrow(Q.secret_change, *args)
        if changed is None:
            raise OpError("update: lost a race")

    async def list(self, worker: int, _n: int) -> None:
        conn = self.conns[worker]
        principal = await self._auth(conn)
        # own_token, patterns: None for an unscoped token (Principal.sql_visibility)
        await conn.fetch(
            Q.secret_list, principal["user_id"], None, None, None, None, None, 101, None, None
        )


# -- the run ---------------------------------------------------------------------------


async def _server_facts(dsn: str) -> dict[str, Any]:
    """The server's version and the settings that bound a write's cost (as SHOW gives them)."""
    names = ("server_version", "synchronous_commit", "fsync", "shared_buffers", "max_connections")
    row = await fetch(dsn, "SELECT " + ", ".join(f"current_setting('{n}') AS {n}" for n in names))
    return {"version" if n == "server_version" else n: row[0][n] for n in names}


async def _measure(out: dict[str, Any], workdir: Path) -> None:
    async with postgres() as pg:
        dsn = await pg.database()
        daemon = Daemon(dsn, workdir)
        out["daemon"] = {"listen": daemon.url}
        try:
            out["daemon"]["ready_after_s"] = round(await daemon.ready(), 3)
            sampler = RssPeak(daemon.pid)
            await sampler.start()
            try:
                await _phases(pg, dsn, daemon, out)
            finally:
                out.setdefault("rss", {})["peak_mib"] = (await sampler.stop())["peak_mib"]
        finally:
            await daemon.close()
            out["daemon"].update(daemon.stopped())
            out["daemon"]["log_lines"] = sum(1 for _ in log_lines(daemon.log_path))


async def _phases(pg: Postgres, dsn: str, daemon: Daemon, out: dict[str, Any]) -> None:
    out["daemon"]["rss_ready_mib"] = daemon.rss_mib()
    cpu = Cpu({"daemon": daemon.pid}, pg.postmaster_pid)
    out["postgres"] = await _server_facts(dsn)
    deployment = (await fetch(dsn, Q.deployment_get))[0]
    out["postgres"]["source"] = "external" if pg.external else "pgserver"
    keyring = crypto.Keyring(crypto.parse_keys(daemon.key))
    hash_key = keyring.decrypt(deployment["hash_key"], b"deployment-hash-key")
    run_tag = secrets.token_hex(3)
    ids: list[str] = []

    # 1. Fill to 10,000 secrets through the API at 32 clients, then read the RSS.
    print(f"fill: {RSS_SECRETS} secrets through the API at 32 clients")
    async with Api(daemon.url, 32) as api:
        create = api_ops(api, ids, run_tag + "f")["create"]
        fill = await run_ops(create, 32, count=RSS_SECRETS, cpu=cpu, label="fill(create)")
    await asyncio.sleep(1.0)
    rss = out.setdefault("rss", {})
    rss["secrets_at_reading"] = await fetchval(dsn, Q.secret_count)
    rss["after_10k_mib"] = daemon.rss_mib()
    out["fill"] = fill

    # 2. API and raw phases at each concurrency.
    out["api"], out["raw"] = {}, {}
    for concurrency in CONCURRENCY:
        key = f"c{concurrency}"
        print(f"API at {concurrency} client(s), {DURATION_S:g} s per operation")
        results: dict[str, Any] = {}
        async with Api(daemon.url, concurrency) as api:
            ops = api_ops(api, ids, f"{run_tag}c{concurrency}")
            for op in API_OPS:
                results[op] = await run_ops(
                    ops[op], concurrency, duration_s=DURATION_S, cpu=cpu, label=f"api {op}"
                )
                if op == "get" and concurrency == max(CONCURRENCY):
                    results["db_connections_in_use"] = await fetchval(dsn, BACKENDS)
        out["api"][key] = results

        print(f"raw asyncpg at {concurrency} connection(s)")
        conns = [await asyncpg.connect(dsn) for _ in range(concurrency)]
        raw = RawOps(conns, keyring, hash_key, deployment["id"], ids, f"{run_tag}c{concurrency}")
        try:
            out["raw"][key] = {
                op: await run_ops(
                    getattr(raw, op), concurrency, duration_s=DURATION_S, cpu=cpu, label=f"raw {op}"
                )
                for op in RAW_OPS
            }
        finally:
            for conn in conns:
                await conn.close()

    rss["end_mib"] = daemon.rss_mib()
    rss["secrets_at_end"] = await fetchval(dsn, Q.secret_count)


def _ratios(out: dict[str, Any]) -> dict[str, Any]:
    """API / raw per operation (the same work), and against the SQL-only variants."""
    ratios: dict[str, Any] = {}
    for key, api in out.get("api", {}).items():
        raw = out["raw"].get(key, {})

        def rate(side: dict[str, Any], op: str) -> float | None:
            return side.get(op, {}).get("ops_per_s")

        row = {op: ratio(rate(api, op), rate(raw, op)) for op in API_OPS}
        row["create_vs_sql_only"] = ratio(rate(api, "create"), rate(raw, "create_sql"))
        row["get_vs_sql_only"] = ratio(rate(api, "get"), rate(raw, "get_sql"))
        ratios[key] = {k: v for k, v in row.items() if v is not None}
    return ratios


def _others_fraction(out: dict[str, Any]) -> float | None:
    """Share of the machine's CPU that other processes used during the phases (0..1)."""
    other = wall = 0.0
    phases = [out["fill"]] if "fill" in out else []
    for side in ("api", "raw"):
        for results in out.get(side, {}).values():
            phases += [r for r in results.values() if isinstance(r, dict)]
    for phase in phases:
        if phase["cpu"]["other_s"] is None:
            return None
        other += phase["cpu"]["other_s"]
        wall += phase["cpu"]["wall_s"]
    return round(other / (wall * (os.cpu_count() or 1)), 3) if wall else None


def _targets(out: dict[str, Any]) -> dict[str, Any]:
    out["ratios"] = _ratios(out)
    out["others_cpu_fraction"] = _others_fraction(out)
    c32 = out.get("api", {}).get("c32", {})
    return {
        "api_create_c32_ops_s": check(">=", 800, c32.get("create", {}).get("ops_per_s")),
        "api_get_c32_ops_s": check(">=", 1500, c32.get("get", {}).get("ops_per_s")),
        "api_create_vs_raw_c32": check(
            ">=", 0.3, out.get("ratios", {}).get("c32", {}).get("create")
        ),
        "daemon_rss_after_10k_mib": check("<=", 150, out.get("rss", {}).get("after_10k_mib")),
    }


def print_summary(out: dict[str, Any]) -> None:
    def num(value: Any, fmt: str = "{:.1f}") -> str:
        return "-" if value is None else fmt.format(value)

    print()
    print(
        f"{'op':<8}{'c':>4} | {'API ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'err':>5} |"
        f" {'raw ops/s':>10}{'p50 ms':>9}{'p99 ms':>9} | {'API/raw':>7}"
        f" | {'cpu ms/op: daemon':>17}{'pg':>7}{'client':>8}"
    )
    print("-" * 121)
    for key in out.get("api", {}):
        for op in API_OPS:
            api = out["api"][key].get(op)
            raw = out["raw"].get(key, {}).get(op, {})
            if api is None:
                continue
            cpu = api.get("cpu_ms_per_op", {})
            print(
                f"{op:<8}{api['concurrency']:>4} | {api['ops_per_s']:>10.1f}"
                f"{num(api['p50_ms'], '{:.2f}'):>9}{num(api['p99_ms'], '{:.2f}'):>9}"
                f"{api['errors']:>5} | {num(raw.get('ops_per_s')):>10}"
                f"{num(raw.get('p50_ms'), '{:.2f}'):>9}{num(raw.get('p99_ms'), '{:.2f}'):>9} |"
                f" {num(out['ratios'].get(key, {}).get(op), '{:.2f}'):>7} |"
                f" {num(cpu.get('daemon'), '{:.3f}'):>17}{num(cpu.get('postgres'), '{:.3f}'):>7}"
                f"{num(cpu.get('client'), '{:.3f}'):>8}"
            )
    for key in out.get("raw", {}):
        for op, what in RAW_EXTRA.items():
            if raw := out["raw"][key].get(op):
                print(
                    f"raw {op:<16} c={raw['concurrency']:<3} {raw['ops_per_s']:>9.1f} ops/s"
                    f"  p50 {num(raw['p50_ms'], '{:.2f}')} ms  p99 {num(raw['p99_ms'], '{:.2f}')}"
                    f" ms  ({what})"
                )
    rss = out.get("rss", {})
    print(
        f"daemon RSS: ready {out.get('daemon', {}).get('rss_ready_mib')} MiB,"
        f" after {rss.get('secrets_at_reading')} secrets {rss.get('after_10k_mib')} MiB,"
        f" end {rss.get('end_mib')} MiB, peak {rss.get('peak_mib')} MiB"
    )
    print(
        f"other processes used {num(out.get('others_cpu_fraction'), '{:.0%}')} of the CPU"
        " during the phases"
    )


async def main() -> dict[str, Any]:
    config = {
        "concurrency": list(CONCURRENCY),
        "duration_s": DURATION_S,
        "rss_secrets": RSS_SECRETS,
        "values_bytes": len(canonical(values_for(0))),
        "client": "aiohttp, one ClientSession, TCPConnector(limit=concurrency)",
        "raw": "asyncpg, one dedicated connection per client, same Q blocks",
    }
    return await measured(NAME, _measure, config=config, targets=_targets, summary=print_summary)


if __name__ == "__main__":
    run_standalone(NAME, main)
