"""Shared fixtures: real PostgreSQL, a migrated template cloned per test, an in-process API."""

from __future__ import annotations

import base64
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from secretmirror.daemon import make_app, open_runtime
from secretmirror.runtime import Runtime
from secretmirror.settings import Settings
from tests.pg import TestPostgres

ADMIN_TOKEN = "smt_test-admin-token-" + "x" * 20

#: Fixture modules: a moto server for the aws store (``moto_server``, ``aws_prefix``),
#: an OpenBao dev server for the hashicorp store (``openbao``), the Azure Key Vault fake
#: (``azure_fake``, ``azure_prefix``), the Secret Manager fake (``gcp_fake``, ``gcp_key_file``,
#: ``gcp_prefix``).
pytest_plugins = ["tests.moto", "tests.openbao", "tests.azurefake", "tests.gcpfake"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[TestPostgres]:
    server = TestPostgres()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def template(postgres: TestPostgres) -> str:
    await postgres.prepare_template()
    return postgres.template


@pytest.fixture
async def database(postgres: TestPostgres, template: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test; its DSN."""
    name = await postgres.create_database(template)
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture
def encryption_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def make_settings(tmp_path: Path, dsn: str, key: str, **overrides: Any) -> Settings:
    return Settings(
        database_url=dsn,
        data_dir=tmp_path / "data",
        encryption_keys=key,
        admin_token=ADMIN_TOKEN,
        **overrides,
    )


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a module to configure stores, replication, ..."""
    return {}


@pytest.fixture
async def runtime(
    tmp_path: Path, database: str, encryption_key: str, settings_overrides: dict[str, Any]
) -> AsyncIterator[Runtime]:
    settings = make_settings(tmp_path, database, encryption_key, **settings_overrides)
    async with open_runtime(settings, database) as rt:
        yield rt


class Api:
    """A thin client of the in-process API with a default token."""

    def __init__(self, client: TestClient[Any, Any], token: str = ADMIN_TOKEN) -> None:
        self.client = client
        self.token = token

    def as_token(self, token: str | None) -> Api:
        return Api(self.client, token or "")

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(extra or {})
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        async with self.client.request(
            method, path, json=json, headers=self._headers(headers), params=params
        ) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body, dict(response.headers)

    async def create(self, name: str, values: dict[str, str], private: bool = False) -> Any:
        status, body, _ = await self.request(
            "POST", "/api/v1/secrets", json={"name": name, "values": values, "private": private}
        )
        assert status == 201, body
        return body

    async def make_user(self, name: str, role: str) -> str:
        """Create a user and a token it made itself (one that reads its private secrets).

        The admin makes the user's first token; the user makes its own with it.
        """
        status, body, _ = await self.request(
            "POST", "/api/v1/users", json={"name": name, "role": role}
        )
        assert status == 201, body
        status, body, _ = await self.request(
            "POST", "/api/v1/tokens", json={"user": name, "name": f"{name}-first"}
        )
        assert status == 201, body
        status, body, _ = await self.as_token(body["token"]).request(
            "POST", "/api/v1/tokens", json={"name": f"{name}-token"}
        )
        assert status == 201, body
        return str(body["token"])


@pytest.fixture
async def api(runtime: Runtime) -> AsyncIterator[Api]:
    app = make_app(runtime)
    async with TestClient(TestServer(app)) as client:
        yield Api(client)


def pytest_configure(config: pytest.Config) -> None:
    # pgserver's platformdirs warns without a runtime dir, and warnings are errors here.
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.gettempdir())
