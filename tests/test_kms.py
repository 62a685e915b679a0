"""KMS envelope encryption on moto's KMS and OpenBao Transit, with real PostgreSQL.

The rotation of ``test_keys`` with data keys from a KMS: rotate the KMS key
(a new AWS key id; a new transit key version), run ``keys rotate``, and nothing
stored depends on the old KMS key any more. Plaintext data keys never reach
PostgreSQL (``pg_dump``). A KMS down at start-up fails readiness; one that goes
down later changes nothing for keys already unwrapped.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import subprocess
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiobotocore.session import get_session
from aiohttp.test_utils import TestClient, TestServer

from secretmirror import metrics
from secretmirror.daemon import make_app, make_readiness, open_runtime
from secretmirror.runtime import Runtime
from secretmirror.settings import Settings
from tests.blackbox import serve_daemon
from tests.conftest import ADMIN_TOKEN, Api
from tests.faultproxy import FaultProxy
from tests.moto import ACCESS_KEY, REGION, SECRET_KEY
from tests.openbao import OpenBao
from tests.pg import TestPostgres
from tests.test_keys import inventory, seed
from tests.test_reconcile import wait_finished


def settings_for(tmp_path: Path, dsn: str, kms: dict[str, Any]) -> Settings:
    return Settings(
        database_url=dsn,
        data_dir=tmp_path / "data",
        admin_token=ADMIN_TOKEN,
        backup={"type": "file", "path": str(tmp_path / "files")},
        replication={"poll_interval_s": 0.2},
        reconcile={"verify_interval_s": 0},
        encryption={"kms": kms},
    )


@asynccontextmanager
async def serving(
    tmp_path: Path, dsn: str, kms: dict[str, Any]
) -> AsyncIterator[tuple[Runtime, Api]]:
    settings = settings_for(tmp_path, dsn, kms)
    async with open_runtime(settings, dsn) as rt, TestClient(TestServer(make_app(rt))) as client:
        yield rt, Api(client)


def aws_kms(endpoint: str, key_id: str) -> dict[str, Any]:
    return {
        "type": "aws",
        "key_id": key_id,
        "region": REGION,
        "endpoint_url": endpoint,
        "auth_method": "secret-key",
        "aws_access_key_id": ACCESS_KEY,
        "aws_secret_access_key": SECRET_KEY,
    }


@asynccontextmanager
async def kms_client(endpoint: str) -> AsyncIterator[Any]:
    async with get_session().create_client(
        "kms",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
    ) as client:
        yield client


async def new_cmk(endpoint: str) -> str:
    async with kms_client(endpoint) as client:
        return str((await client.create_key())["KeyMetadata"]["KeyId"])


async def stored_data_keys(rt: Runtime) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch("SELECT id, kms, wrapped FROM kms_data_keys ORDER BY created")
    return [dict(r) for r in rows]


def pg_dump(dsn: str) -> bytes:
    """The whole database as pg_dump writes it (the binary pgserver ships)."""
    import pgserver

    binary = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    return subprocess.run(
        [str(binary), "--dbname", dsn, "--data-only"], capture_output=True, check=True, timeout=60
    ).stdout


def assert_not_in_dump(dump: bytes, plain_keys: list[bytes]) -> None:
    assert dump, "pg_dump wrote nothing"
    for plain in plain_keys:
        for form in (
            plain,
            plain.hex().encode(),
            base64.b64encode(plain),
            plain.hex()[:16].encode(),
        ):
            assert form not in dump


async def rotation(
    tmp_path: Path,
    database: str,
    first: dict[str, Any],
    second: dict[str, Any],
    unwrap: Any,
    retire_old_kms_key: Any,
) -> None:
    """Seed under ``first``; rotate under ``second``; retire the old KMS key; read all."""
    async with serving(tmp_path, database, first) as (rt, api):
        ids = await seed(rt, api, 20)
        [old] = await stored_data_keys(rt)
        body = await inventory(api)
        assert [k["ciphertexts"] for k in body["keys"]] == [40 + 20 + 20 + 1]
    old_plain = await unwrap(old["wrapped"])
    async with serving(tmp_path, database, second) as (rt, api):
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        job = await wait_finished(api, job["id"])
        assert job["status"] == "succeeded", job
        assert job["counts"]["rekeyed"] == 40 + 20 + 20 + 1
        body = await inventory(api)
        [new] = await stored_data_keys(rt)
        assert new["id"] != old["id"]
        assert body["keys"] == [
            {
                "id": new["id"].hex(),
                "position": 0,
                "ciphertexts": 81,
                "stored_in": {"event_log": 40, "sql": 20, "file (backup)": 20, "internal": 1},
            }
        ]
        assert body["unknown"] == []
    new_plain = await unwrap(new["wrapped"])
    await retire_old_kms_key()
    async with serving(tmp_path, database, second) as (rt, api):
        for i, secret_id in enumerate(ids):
            status, got, _ = await api.request("GET", f"/api/v1/secrets/{secret_id}")
            assert status == 200
            assert got["values"] == {"v": f"two-{i}"}
            status, got, _ = await api.request(
                "GET", f"/api/v1/secrets/{secret_id}", params={"version": "1"}
            )
            assert status == 200
            assert got["values"] == {"v": f"one-{i}"}
    dump = await asyncio.to_thread(pg_dump, database)
    assert new["wrapped"].hex().encode() in dump.replace(b"\\\\x", b"")  # the dump is complete
    assert_not_in_dump(dump, [old_plain, new_plain])


async def test_aws_kms_rotation(tmp_path: Path, database: str, moto_server: str) -> None:
    """A new AWS KMS key, keys rotate: the old KMS key can be disabled, all reads work."""
    first, second = await new_cmk(moto_server), await new_cmk(moto_server)

    async def unwrap(wrapped: bytes) -> bytes:
        async with kms_client(moto_server) as client:
            return bytes((await client.decrypt(CiphertextBlob=wrapped))["Plaintext"])

    async def disable_first() -> None:
        async with kms_client(moto_server) as client:
            await client.disable_key(KeyId=first)

    await rotation(
        tmp_path,
        database,
        aws_kms(moto_server, first),
        aws_kms(moto_server, second),
        unwrap,
        disable_first,
    )


@pytest.fixture
def transit(openbao: OpenBao) -> tuple[OpenBao, str]:
    """A transit mount of this test's own with key ``k``."""
    mount = f"transit-{secrets.token_hex(4)}"
    openbao.ok("POST", f"sys/mounts/{mount}", {"type": "transit"})
    openbao.ok("POST", f"{mount}/keys/k", {})
    return openbao, mount


def transit_kms(bao: OpenBao, mount: str) -> dict[str, Any]:
    return {
        "type": "hashicorp",
        "url": bao.url,
        "mount": mount,
        "key_name": "k",
        "token": bao.root_token,
    }


async def test_transit_rotation(
    tmp_path: Path, database: str, transit: tuple[OpenBao, str]
) -> None:
    """Rotate the transit key, keys rotate: with min_decryption_version raised, all reads work."""
    bao, mount = transit
    settings = transit_kms(bao, mount)

    async def unwrap(wrapped: bytes) -> bytes:
        answer = bao.ok("POST", f"{mount}/decrypt/k", {"ciphertext": wrapped.decode()})
        return base64.b64decode(answer["data"]["plaintext"])

    async def raise_min_version() -> None:
        bao.ok("POST", f"{mount}/keys/k/config", {"min_decryption_version": 2})

    async def rotate_transit_key() -> None:
        bao.ok("POST", f"{mount}/keys/k/rotate", {})

    # The KMS key is rotated between the seeding and `keys rotate`.
    await rotation_with_transit(tmp_path, database, settings, unwrap, rotate_transit_key)
    await raise_min_version()
    async with serving(tmp_path, database, settings) as (rt, api):
        for row in await stored_data_keys(rt):
            assert row["wrapped"].startswith(b"vault:v2:")
        body = await inventory(api)
        assert body["unknown"] == []
        status, listed, _ = await api.request("GET", "/api/v1/secrets", params={"limit": "100"})
        assert status == 200
        for item in listed["items"]:
            status, _, _ = await api.request("GET", f"/api/v1/secrets/{item['id']}")
            assert status == 200


async def rotation_with_transit(
    tmp_path: Path, database: str, settings: dict[str, Any], unwrap: Any, rotate_key: Any
) -> None:
    async with serving(tmp_path, database, settings) as (rt, api):
        await seed(rt, api, 10)
        [old] = await stored_data_keys(rt)
        assert old["wrapped"].startswith(b"vault:v1:")
    old_plain = await unwrap(old["wrapped"])
    await rotate_key()
    async with serving(tmp_path, database, settings) as (rt, api):
        _, job, _ = await api.request("POST", "/admin/v1/keys/rotate")
        job = await wait_finished(api, job["id"])
        assert job["status"] == "succeeded", job
        [new] = await stored_data_keys(rt)
        assert new["wrapped"].startswith(b"vault:v2:")
    new_plain = await unwrap(new["wrapped"])
    dump = await asyncio.to_thread(pg_dump, database)
    assert_not_in_dump(dump, [old_plain, new_plain])


async def test_kms_down_at_start_fails_readiness(
    tmp_path: Path, database: str, moto_server: str
) -> None:
    """Readiness names the KMS while it is down; reads are 503, not 500; then it recovers."""
    key_id = await new_cmk(moto_server)
    parts = urlsplit(moto_server)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80) as proxy:
        kms = aws_kms(proxy.url, key_id)
        async with serving(tmp_path, database, kms) as (rt, api):
            ids = await seed(rt, api, 2)
        await proxy.down()
        async with serving(tmp_path, database, kms) as (rt, api):
            reasons = await make_readiness(rt)()
            assert any("the KMS is unavailable" in r for r in reasons), reasons
            assert metrics.kms_up.labels("aws")._value.get() == 0
            status, body, _ = await api.request("GET", f"/api/v1/secrets/{ids[0]}")
            assert status == 503, body
            assert "values" not in body
            await proxy.pass_through()
            from secretmirror import kms_keys

            await kms_keys.refresh(rt, rt.keyring)  # type: ignore[arg-type]
            assert await make_readiness(rt)() == []
            assert metrics.kms_up.labels("aws")._value.get() == 1
            status, body, _ = await api.request("GET", f"/api/v1/secrets/{ids[0]}")
            assert status == 200, body


async def test_kms_down_later_keeps_unwrapped_keys_working(
    tmp_path: Path, database: str, moto_server: str
) -> None:
    """Once unwrapped, data keys need no KMS: reads and writes go on while it is down."""
    key_id = await new_cmk(moto_server)
    parts = urlsplit(moto_server)
    async with FaultProxy(parts.hostname or "127.0.0.1", parts.port or 80) as proxy:
        kms = aws_kms(proxy.url, key_id)
        async with serving(tmp_path, database, kms) as (rt, api):
            ids = await seed(rt, api, 2)
            await proxy.down()
            status, body, _ = await api.request("GET", f"/api/v1/secrets/{ids[0]}")
            assert status == 200, body
            created = await api.create("during-outage", {"k": "v"})
            status, body, _ = await api.request("GET", f"/api/v1/secrets/{created['id']}")
            assert status == 200
            assert body["values"] == {"k": "v"}
            assert await make_readiness(rt)() == []


def test_kms_and_local_keys_are_exclusive() -> None:
    from secretmirror.errors import ConfigError
    from secretmirror.settings import load_settings

    with pytest.raises(ConfigError, match=r"encryption_keys or encryption\.kms"):
        load_settings(
            encryption_keys=base64.b64encode(b"k" * 32).decode(),
            encryption={"kms": {"type": "aws", "key_id": "alias/x"}},
        )


async def test_a_lost_data_key_row_refuses_start(
    tmp_path: Path, database: str, moto_server: str
) -> None:
    """Ciphertexts whose data key row is gone: start-up names it and the KMS fix."""
    from secretmirror.keys import KeysMissing

    kms = aws_kms(moto_server, await new_cmk(moto_server))
    async with serving(tmp_path, database, kms) as (rt, api):
        await seed(rt, api, 1)
        [row] = await stored_data_keys(rt)
        await rt.pool.execute("DELETE FROM kms_data_keys")
    with pytest.raises(KeysMissing) as raised:
        async with serving(tmp_path, database, kms):
            pass
    assert f"{row['id'].hex()} (5 ciphertexts)" in raised.value.message
    assert "restore their rows of kms_data_keys from a database backup" in raised.value.message


async def test_local_keys_export_no_kms_up_series(
    postgres: TestPostgres, template: str, tmp_path: Path
) -> None:
    """Only a deployment with a KMS has secretmirror_kms_up: local keys must not read as down."""
    text = ""
    async for daemon in serve_daemon(postgres, template, tmp_path / "data"):
        with urllib.request.urlopen(daemon.url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    assert "# TYPE secretmirror_kms_up gauge" in text
    samples = [line for line in text.splitlines() if line.startswith("secretmirror_kms_up")]
    assert samples == []
