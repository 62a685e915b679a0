"""Encryption at rest: no plaintext value in any column, and ciphertexts bound to their row."""

from __future__ import annotations

import base64
import json
import secrets

import asyncpg
import pytest

from secretmirror import crypto
from secretmirror.errors import DecryptionError
from secretmirror.runtime import Runtime
from tests.conftest import Api

SECRETS = "/api/v1/secrets"
_SCANNED_TYPES = ("text", "character varying", "character", "json", "jsonb", "bytea")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def columns_holding(conn: asyncpg.Connection, needle: bytes) -> list[str]:
    """Every ``table.column`` of a text, json or bytea type whose data contains ``needle``."""
    columns = await conn.fetch(
        """
        SELECT c.table_schema, c.table_name, c.column_name, c.data_type
        FROM information_schema.columns c
        JOIN information_schema.tables t
          ON t.table_schema = c.table_schema AND t.table_name = c.table_name
        WHERE t.table_type = 'BASE TABLE'
          AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
          AND c.data_type = ANY($1::text[])
        """,
        list(_SCANNED_TYPES),
    )
    assert columns, "the scan found no columns at all"
    found = []
    for col in columns:
        table = f"{_quote(col['table_schema'])}.{_quote(col['table_name'])}"
        column = _quote(col["column_name"])
        if col["data_type"] == "bytea":
            query = f"SELECT count(*) FROM {table} WHERE position($1::bytea in {column}) > 0"
            hits = await conn.fetchval(query, needle)
        else:
            query = f"SELECT count(*) FROM {table} WHERE strpos({column}::text, $1) > 0"
            hits = await conn.fetchval(query, needle.decode())
        if hits:
            found.append(f"{col['table_name']}.{col['column_name']}")
    return found


async def test_scan_finds_a_plaintext_column(api: Api, runtime: Runtime) -> None:
    """The scan itself works: a secret's name, stored in the clear, is found."""
    name = "visible-" + secrets.token_hex(8)
    await api.create(name, {"a": "1"})
    async with runtime.pool.acquire() as conn:
        assert "secrets.name" in await columns_holding(conn, name.encode())


async def test_no_column_holds_a_canary_value(api: Api, runtime: Runtime) -> None:
    """After create, update, older-version read and delete, no column holds the canary bytes."""
    canary = "canary-" + secrets.token_hex(16)
    created = await api.create("canary", {"password": canary, "other": "x"})
    path = f"{SECRETS}/{created['id']}"
    await api.request("PATCH", path, json={"values": {"second": canary + "-2"}})
    await api.request("PUT", path, json={"name": "canary", "values": {"third": canary}})
    status, _, _ = await api.request("GET", path, params={"version": "1"})
    assert status == 200
    doomed = await api.create("doomed", {"k": canary})
    await api.request("DELETE", f"{SECRETS}/{doomed['id']}")
    needles = [canary.encode(), canary.encode().hex().encode(), base64.b64encode(canary.encode())]
    async with runtime.pool.acquire() as conn:
        for needle in needles:
            assert await columns_holding(conn, needle) == [], needle


async def test_secret_values_are_stored_as_envelopes(api: Api, runtime: Runtime) -> None:
    """The stored value and the event snapshot are envelopes of the configured key."""
    created = await api.create("enveloped", {"a": "1"})
    value = await runtime.pool.fetchval(
        "SELECT ciphertext FROM secretmirror_values WHERE secret_id = $1", created["id"]
    )
    snapshot = await runtime.pool.fetchval(
        "SELECT snapshot FROM events WHERE secret_id = $1", created["id"]
    )
    for blob in (value, snapshot):
        assert blob[0] == 1
        assert blob[1:9] == runtime.keyring.primary_key_id


async def _two_secrets(api: Api, canary: str) -> tuple[str, str]:
    source = await api.create("source", {"a": canary})
    target = await api.create("target", {"a": "target-value"})
    return source["id"], target["id"]


async def test_ciphertext_moved_to_another_secret_does_not_decrypt(
    api: Api, runtime: Runtime
) -> None:
    """A stored value copied onto another secret's row fails to decrypt in the sql store."""
    source, target = await _two_secrets(api, "canary-" + secrets.token_hex(8))
    await runtime.pool.execute(
        """UPDATE secretmirror_values SET ciphertext =
               (SELECT ciphertext FROM secretmirror_values WHERE secret_id = $1)
           WHERE secret_id = $2""",
        source,
        target,
    )
    with pytest.raises(DecryptionError):
        await runtime.primary.store.get(target)


async def test_api_refuses_a_moved_ciphertext_without_leaking(api: Api, runtime: Runtime) -> None:
    """With another secret's value and snapshot copied in, no source can serve: 503, no values."""
    canary = "canary-" + secrets.token_hex(8)
    source, target = await _two_secrets(api, canary)
    async with runtime.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """UPDATE secretmirror_values SET ciphertext =
                   (SELECT ciphertext FROM secretmirror_values WHERE secret_id = $1)
               WHERE secret_id = $2""",
            source,
            target,
        )
        await conn.execute(
            """UPDATE events SET snapshot =
                   (SELECT snapshot FROM events WHERE secret_id = $1 AND version = 1)
               WHERE secret_id = $2 AND version = 1""",
            source,
            target,
        )
    async with api.client.get(
        f"{SECRETS}/{target}", headers={"Authorization": f"Bearer {api.token}"}
    ) as response:
        text = await response.text()
        assert response.status == 503
    assert canary not in text
    assert "Traceback" not in text
    assert json.loads(text)["error"]["code"] == "unavailable"


async def test_older_version_ciphertext_does_not_decrypt_as_current(
    api: Api, runtime: Runtime
) -> None:
    """Version 1's ciphertext put back as the stored value of version 2 fails to decrypt."""
    canary = "canary-" + secrets.token_hex(8)
    created = await api.create("rolled-back", {"a": canary})
    path = f"{SECRETS}/{created['id']}"
    await api.request("PATCH", path, json={"values": {"a": "new"}})
    await runtime.pool.execute(
        """UPDATE secretmirror_values SET ciphertext =
               (SELECT snapshot FROM events WHERE secret_id = $1 AND version = 1)
           WHERE secret_id = $1""",
        created["id"],
    )
    with pytest.raises(DecryptionError):
        await runtime.primary.store.get(created["id"])


async def test_snapshot_moved_to_another_version_does_not_decrypt(
    api: Api, runtime: Runtime
) -> None:
    """An event snapshot copied onto another version's event is refused by ?version=N."""
    canary = "canary-" + secrets.token_hex(8)
    created = await api.create("versions", {"a": "old"})
    path = f"{SECRETS}/{created['id']}"
    await api.request("PATCH", path, json={"values": {"a": canary}})
    await api.request("PATCH", path, json={"values": {"a": "newest"}})
    await runtime.pool.execute(
        """UPDATE events SET snapshot =
               (SELECT snapshot FROM events WHERE secret_id = $1 AND version = 2)
           WHERE secret_id = $1 AND version = 1""",
        created["id"],
    )
    async with api.client.get(
        path, params={"version": "1"}, headers={"Authorization": f"Bearer {api.token}"}
    ) as response:
        text = await response.text()
        assert response.status >= 500
    assert canary not in text


def test_keyring_uses_a_fresh_nonce_each_time() -> None:
    """Encrypting the same plaintext twice gives different envelopes that both decrypt."""
    keyring = crypto.Keyring([secrets.token_bytes(32)])
    aad = crypto.secret_aad("id", 1)
    first, second = keyring.encrypt(b"same", aad), keyring.encrypt(b"same", aad)
    assert first != second
    assert keyring.decrypt(first, aad) == keyring.decrypt(second, aad) == b"same"


def test_keyring_refuses_an_unknown_key() -> None:
    """An envelope of a key that is not configured is a DecryptionError."""
    aad = crypto.secret_aad("id", 1)
    envelope = crypto.Keyring([secrets.token_bytes(32)]).encrypt(b"x", aad)
    with pytest.raises(DecryptionError):
        crypto.Keyring([secrets.token_bytes(32)]).decrypt(envelope, aad)


def test_keyring_decrypts_with_a_retired_key() -> None:
    """After rotation (a new first key) envelopes of the old key still decrypt."""
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    aad = crypto.secret_aad("id", 1)
    envelope = crypto.Keyring([old]).encrypt(b"x", aad)
    rotated = crypto.Keyring([new, old])
    assert rotated.decrypt(envelope, aad) == b"x"
    assert rotated.needs_reencryption(envelope)
