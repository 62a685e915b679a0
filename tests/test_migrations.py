"""Migrations: empty to head, idempotent, safe when concurrent, and the schema the code expects."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from secretmirror import db
from secretmirror.daemon import open_runtime
from secretmirror.errors import SchemaMismatch
from secretmirror.queries import Q
from tests.conftest import Api, make_settings
from tests.pg import TestPostgres


@pytest.fixture
async def empty_database(postgres: TestPostgres) -> AsyncIterator[str]:
    """A database with no schema at all; its DSN."""
    name = await postgres.create_database()
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def migrations_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the migrations directory that the runner reads instead of the real one."""
    copy = tmp_path / "migrations"
    shutil.copytree(db.migrations_dir(), copy)
    monkeypatch.setenv("SECRETMIRROR_MIGRATIONS_DIR", str(copy))
    return copy


async def schema_of(conn: asyncpg.Connection) -> dict[str, Any]:
    """Tables, columns, indexes and constraints of the public schema, comparable with ==."""
    columns = await conn.fetch(
        """SELECT table_name, column_name, data_type, is_nullable, column_default,
                  character_maximum_length, ordinal_position
           FROM information_schema.columns WHERE table_schema = 'public'
           ORDER BY table_name, ordinal_position"""
    )
    indexes = await conn.fetch(
        "SELECT tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY tablename, indexname"
    )
    constraints = await conn.fetch(
        """SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
           FROM pg_constraint WHERE connamespace = 'public'::regnamespace
           ORDER BY 1, 2"""
    )
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
    }


SCHEMA_DUMP = Path(__file__).with_name("schema.sql")
SCHEMA_HEADER = """\
-- The schema the migrations build: pg_dump --schema-only --no-owner --no-privileges of a
-- freshly migrated database, normalised (comments and SET lines left out). Checked by
-- tests/test_migrations.py::test_migrated_schema_matches_the_checked_in_dump; regenerate
-- with SECRETMIRROR_WRITE_SCHEMA=1 pytest tests/test_migrations.py -k checked_in_dump

"""
_NOT_SCHEMA = ("--", "SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict")


def pg_dump() -> str:
    """The pg_dump of pgserver's PostgreSQL (the tests' server), else the one on PATH."""
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    found = str(bundled) if bundled.is_file() else shutil.which("pg_dump")
    if found is None:
        pytest.fail("pg_dump is missing: install pgserver (the test extras) or PostgreSQL")
    return found


def normalised(dump: str) -> str:
    """The statements of a schema dump: no comments, session settings or runs of blank lines."""
    lines = [line.rstrip() for line in dump.splitlines() if not line.startswith(_NOT_SCHEMA)]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip() + "\n"


async def schema_dump(dsn: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        pg_dump(),
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-tablespaces",
        f"--dbname={dsn}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode(errors="replace")
    return normalised(out.decode())


async def applied_versions(conn: asyncpg.Connection) -> list[int]:
    return [r["version"] for r in await conn.fetch(Q.migrations_applied)]


def known_versions() -> list[int]:
    return [m.version for m in db.known_migrations()]


def test_migration_files_are_numbered_uniquely() -> None:
    """Every .sql file is a migration the runner picks up, each number once, from 1.

    Numbers are handed out per change ahead of time, so one may land before a lower
    one: a gap is allowed, a number used twice is not.
    """
    files = sorted(p.name for p in db.migrations_dir().glob("*.sql"))
    assert [m.path.name for m in db.known_migrations()] == files
    versions = known_versions()
    assert versions[0] == 1
    assert versions == sorted(set(versions))


async def test_upgrade_from_empty_reaches_head(empty_database: str) -> None:
    """From an empty database, upgrade applies every migration and check_schema passes."""
    async with db.connect(empty_database) as conn:
        applied = await db.upgrade(conn)
        assert applied == known_versions()
        assert await applied_versions(conn) == known_versions()
        await db.check_schema(conn)


async def test_second_upgrade_is_a_noop(empty_database: str) -> None:
    """Running upgrade again applies nothing and changes no part of the schema."""
    async with db.connect(empty_database) as conn:
        await db.upgrade(conn)
        before = await schema_of(conn)
        assert await db.upgrade(conn) == []
        assert await schema_of(conn) == before
        assert await applied_versions(conn) == known_versions()


async def test_concurrent_upgrades_are_safe(empty_database: str) -> None:
    """Two upgrades racing on one empty database apply each migration exactly once."""
    async with db.connect(empty_database) as first, db.connect(empty_database) as second:
        results = await asyncio.gather(db.upgrade(first), db.upgrade(second))
        assert sorted(results, key=len) == [[], known_versions()]
        assert await applied_versions(first) == known_versions()
        await db.check_schema(second)


async def test_migrated_schema_matches_the_checked_in_dump(empty_database: str) -> None:
    """Migrations from empty build exactly the schema in ``tests/schema.sql``.

    The dump is ``pg_dump --schema-only`` of a freshly migrated database, normalised
    (comments, ``SET`` lines and owners left out). A migration that changes the schema
    changes the dump in the same commit, so the review shows the schema's change.
    Regenerate it after adding a migration with
    ``SECRETMIRROR_WRITE_SCHEMA=1 pytest tests/test_migrations.py -k checked_in_dump``.
    """
    async with db.connect(empty_database) as conn:
        await db.upgrade(conn)
    dumped = await schema_dump(empty_database)
    if os.environ.get("SECRETMIRROR_WRITE_SCHEMA"):
        SCHEMA_DUMP.write_text(SCHEMA_HEADER + dumped)
    assert "CREATE TABLE public.secrets" in dumped
    assert normalised(SCHEMA_DUMP.read_text()) == dumped, (
        "the migrated schema differs from tests/schema.sql; if the change is meant, regenerate "
        "it: SECRETMIRROR_WRITE_SCHEMA=1 pytest tests/test_migrations.py -k checked_in_dump"
    )


async def test_every_query_prepares_against_the_migrated_schema(database: str) -> None:
    """Each named SQL block the code runs refers only to tables and columns that exist."""
    failures = {}
    async with db.connect(database) as conn:
        # Session-scoped tables are the code's own: create them as it does first.
        for name in Q.names():
            if getattr(Q, name).upper().startswith("CREATE TEMP"):
                await conn.execute(getattr(Q, name))
        for name in Q.names():
            try:
                await conn.prepare(getattr(Q, name))
            except asyncpg.PostgresError as exc:
                failures[name] = f"{type(exc).__name__}: {exc}"
    assert failures == {}


async def test_sql_store_table_matches_the_migration(empty_database: str, database: str) -> None:
    """The sql store's own CREATE TABLE builds the same table as the migrations."""
    query = """SELECT column_name, data_type, is_nullable, column_default
               FROM information_schema.columns
               WHERE table_schema = 'public' AND table_name = 'secretmirror_values'
               ORDER BY ordinal_position"""
    async with db.connect(empty_database) as conn:
        await conn.execute(Q.sql_store_schema)
        standalone = [tuple(r) for r in await conn.fetch(query)]
    async with db.connect(database) as conn:
        migrated = [tuple(r) for r in await conn.fetch(query)]
    assert standalone
    assert standalone == migrated


async def test_check_schema_refuses_an_empty_database(empty_database: str) -> None:
    """An unmigrated database is refused with a message naming `secretmirror db upgrade`."""
    async with db.connect(empty_database) as conn:
        with pytest.raises(SchemaMismatch, match="secretmirror db upgrade"):
            await db.check_schema(conn)


async def test_check_schema_refuses_a_database_behind(database: str) -> None:
    """A database missing a known migration is refused with a message naming the fix."""
    async with db.connect(database) as conn:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", known_versions()[-1])
        with pytest.raises(SchemaMismatch, match=r"behind.*secretmirror db upgrade"):
            await db.check_schema(conn)


async def test_newer_schema_is_refused_by_upgrade(database: str) -> None:
    """A database with a migration newer than known is refused, naming the fix."""
    async with db.connect(database) as conn:
        await conn.execute(Q.migrations_record, 9999, "from_the_future")
        with pytest.raises(SchemaMismatch, match=r"\[9999\].*upgrade secretmirror"):
            await db.upgrade(conn)


async def test_newer_schema_is_refused_by_check_schema(database: str) -> None:
    """check_schema (start-up and readiness) refuses a migration newer than known."""
    async with db.connect(database) as conn:
        await conn.execute(Q.migrations_record, 9999, "from_the_future")
        with pytest.raises(SchemaMismatch, match="upgrade secretmirror"):
            await db.check_schema(conn)


async def test_newer_schema_keeps_the_daemon_from_starting(
    database: str, tmp_path: Path, encryption_key: str
) -> None:
    """open_runtime (what `serve` starts with) refuses a schema newer than it knows."""
    async with db.connect(database) as conn:
        await conn.execute(Q.migrations_record, 9999, "from_the_future")
    settings = make_settings(tmp_path, database, encryption_key)
    with pytest.raises(SchemaMismatch, match="upgrade secretmirror"):
        async with open_runtime(settings, database):
            pass


async def test_newer_schema_makes_readyz_fail(api: Api, database: str) -> None:
    """A serving process reports 503 on /readyz once the schema is newer than it knows."""
    async with db.connect(database) as conn:
        await conn.execute(Q.migrations_record, 9999, "from_the_future")
    status, body, _ = await api.as_token(None).request("GET", "/readyz")
    assert status == 503
    assert any("upgrade secretmirror" in reason for reason in body["reasons"])


async def test_new_migration_is_applied_alone(database: str, migrations_copy: Path) -> None:
    """On a database at head, a new migration file is the only one applied."""
    version = known_versions()[-1] + 1
    (migrations_copy / f"{version:04d}_add_probe.sql").write_text(
        "CREATE TABLE migration_probe (id integer PRIMARY KEY);"
    )
    async with db.connect(database) as conn:
        assert await db.upgrade(conn) == [version]
        assert await conn.fetchval("SELECT to_regclass('migration_probe') IS NOT NULL")


async def test_failing_migration_applies_nothing(
    empty_database: str, migrations_copy: Path
) -> None:
    """A migration that fails rolls back the whole upgrade, earlier migrations included."""
    version = known_versions()[-1] + 1
    (migrations_copy / f"{version:04d}_broken.sql").write_text(
        "CREATE TABLE half_done (id integer); SELECT no_such_column FROM half_done;"
    )
    async with db.connect(empty_database) as conn:
        with pytest.raises(asyncpg.UndefinedColumnError):
            await db.upgrade(conn)
        assert await conn.fetchval("SELECT to_regclass('schema_migrations')") is None
        assert await conn.fetchval("SELECT to_regclass('secrets')") is None
