"""PostgreSQL for the tests: ``pgserver`` unless SECRETMIRROR_TEST_DATABASE_URL names a server.

The schema is migrated once into a template database; each test gets a clone.
The benchmarks (bench/) use the same class with SECRETMIRROR_BENCH_DATABASE_URL.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from secretmirror import db

_counter = itertools.count()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


class TestPostgres:
    """One server for the session; template and per-test databases on it."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, url_variable: str = "SECRETMIRROR_TEST_DATABASE_URL") -> None:
        self._server: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        url = os.environ.get(url_variable)
        self.external = bool(url)
        if url:
            self.admin_dsn = url
        else:
            import pgserver

            self._tmp = tempfile.TemporaryDirectory(prefix="sm-test-pg-")
            self._server = pgserver.get_server(Path(self._tmp.name) / "pg", cleanup_mode="stop")
            self.admin_dsn = self._server.get_uri()
        self.prefix = f"smt{os.getpid()}_"
        self.template = self.prefix + "template"

    async def prepare_template(self) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{self.template}"')
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        async with db.connect(with_database(self.admin_dsn, self.template)) as conn:
            await db.upgrade(conn)

    async def create_database(self, template: str | None = None) -> str:
        name = f"{self.prefix}{next(_counter)}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            if template is None:
                await conn.execute(f'CREATE DATABASE "{name}"')
            else:
                await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        finally:
            await conn.close()
        return name

    async def drop_database(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    @property
    def postmaster_pid(self) -> int | None:
        """The pgserver's postmaster (None on an external server): its CPU is measured."""
        return None if self._server is None else int(self._server.get_pid())

    def dsn(self, name: str) -> str:
        return with_database(self.admin_dsn, name)

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
