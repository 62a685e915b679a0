"""Consuming secrets from the command line (spec section 15), black-box.

One ``secretmirror serve`` subprocess on its own database serves the module;
every test runs the ``secretmirror`` executable as a subprocess, as a script
or a person would, and uses names of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.daemon_proc import DaemonProcess
from tests.pg import TestPostgres

pytestmark = pytest.mark.acceptance

BIN = str(Path(sys.executable).parent / "secretmirror")
HOSTILE = 'it\'s "quoted" $HOME `x` \\ \nsecond line\t=tab'


@pytest.fixture(scope="module")
async def module_dsn(postgres: TestPostgres, template: str) -> AsyncIterator[str]:
    name = await postgres.create_database(template)
    yield postgres.dsn(name)
    await postgres.drop_database(name)


@pytest.fixture(scope="module")
def daemon(module_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    base = tmp_path_factory.mktemp("consume-daemon")
    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    proc = DaemonProcess(
        {"SECRETMIRROR_DATABASE_URL": module_dsn, "SECRETMIRROR_ENCRYPTION_KEYS": key},
        base / "data",
        base / "daemon.log",
    )
    proc.start(timeout=60)
    yield proc
    proc.stop()


class Sm:
    """Runs the ``secretmirror`` executable against the daemon."""

    def __init__(self, url: str, cwd: Path) -> None:
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SECRETMIRROR_")},
            "SECRETMIRROR_URL": url,
            "SECRETMIRROR_TOKEN": ADMIN_TOKEN,
        }
        self.cwd = cwd

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [BIN, *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, input: str | None = None) -> str:
        done = self(*args, input=input)
        assert done.returncode == 0, (done.stdout, done.stderr)
        return done.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))


@pytest.fixture
def sm(daemon: DaemonProcess, tmp_path: Path) -> Sm:
    return Sm(daemon.url, tmp_path)


@pytest.fixture
def name() -> str:
    """A secret name of this test's own (the daemon is shared by the module)."""
    return f"t-{uuid.uuid4().hex[:12]}"


# -- writing values -----------------------------------------------------------------


def test_value_from_a_file(sm: Sm, name: str, tmp_path: Path) -> None:
    """`KEY=@FILE` stores the file's content exactly, trailing newline included."""
    pem = "-----BEGIN CERT-----\nabc\n-----END CERT-----\n"
    (tmp_path / "cert.pem").write_text(pem)
    sm.ok("secret", "create", name, "cert=@cert.pem", "user=app")
    assert sm.json("secret", "get", name)["values"] == {"cert": pem, "user": "app"}


def test_value_from_stdin(sm: Sm, name: str) -> None:
    """`KEY=@-` reads the value from stdin."""
    sm.ok("secret", "create", name, "password=@-", input=HOSTILE)
    assert sm.json("secret", "get", name)["values"] == {"password": HOSTILE}


def test_escaped_at_is_a_literal(sm: Sm, name: str) -> None:
    """`KEY=\\@x` stores "@x"; a file is never read for it."""
    sm.ok("secret", "create", name, "handle=\\@vals.yaml")
    assert sm.json("secret", "get", name)["values"] == {"handle": "@vals.yaml"}


def test_missing_value_file_is_an_error(sm: Sm, name: str) -> None:
    """`KEY=@missing` fails with exit 2 naming the file, and creates nothing."""
    done = sm("secret", "create", name, "k=@missing.txt")
    assert done.returncode == 2
    assert "missing.txt" in done.stderr
    assert sm("secret", "get", name).returncode == 1


def test_update_takes_a_value_from_a_file(sm: Sm, name: str, tmp_path: Path) -> None:
    """`secret update NAME KEY=@FILE` works as create does."""
    sm.ok("secret", "create", name, "k=old")
    (tmp_path / "new.txt").write_text("new value")
    sm.ok("secret", "update", name, "k=@new.txt")
    assert sm.json("secret", "get", name)["values"] == {"k": "new value"}


def test_values_file_in_yaml(sm: Sm, name: str, tmp_path: Path) -> None:
    """A YAML values file; scalars are kept exactly as written (no 5432 -> int, yes -> true)."""
    (tmp_path / "vals.yaml").write_text(
        "# database\nhost: db.internal\nport: 5432\nssl: yes\nzip: 01234\n"
        "multi: |\n  line one\n  line two\nquoted: 'it''s'\n"
    )
    sm.ok("secret", "create", name, "--values-file", "vals.yaml")
    assert sm.json("secret", "get", name)["values"] == {
        "host": "db.internal",
        "port": "5432",
        "ssl": "yes",
        "zip": "01234",
        "multi": "line one\nline two\n",
        "quoted": "it's",
    }


def test_values_file_in_yaml_must_be_flat(sm: Sm, name: str, tmp_path: Path) -> None:
    """A nested YAML mapping is a usage error, with nothing created."""
    (tmp_path / "vals.yaml").write_text("db:\n  host: x\n")
    done = sm("secret", "create", name, "--values-file", "vals.yaml")
    assert done.returncode == 2
    assert "YAML mapping" in done.stderr


# -- reading values -----------------------------------------------------------------


def test_get_key_prints_the_value_alone(sm: Sm, name: str) -> None:
    """`--key KEY` prints the value and nothing else (no newline off a terminal)."""
    sm.ok("secret", "create", name, f"password={HOSTILE}", "user=app")
    assert sm.ok("secret", "get", name, "--key", "password") == HOSTILE


def test_get_unknown_key_is_an_error(sm: Sm, name: str) -> None:
    """`--key` naming a key the secret lacks exits 1 naming the key."""
    sm.ok("secret", "create", name, "user=app")
    done = sm("secret", "get", name, "--key", "password")
    assert (done.returncode, done.stdout) == (1, "")
    assert "'password'" in done.stderr


def test_get_env_prints_keys_as_stored(sm: Sm, name: str) -> None:
    """`-o env` is dotenv: keys as stored, values quoted."""
    sm.ok("secret", "create", name, "db.user=app", "pass=two words")
    assert sm.ok("secret", "get", name, "-o", "env") == "db.user=app\npass='two words'\n"


def test_get_shell_output_evals_to_the_values(sm: Sm, name: str) -> None:
    """`eval "$(secretmirror secret get NAME -o shell)"` exports every value exactly."""
    sm.ok("secret", "create", name, f"api-key={HOSTILE}", "db.user=app")
    out = sm.ok("secret", "get", name, "-o", "shell")
    assert out.startswith("export api_key='")
    script = (
        f'eval "$({BIN} secret get {name} -o shell)"; printf %s "$api_key"; echo; echo "$db_user"'
    )
    done = subprocess.run(
        ["sh", "-c", script], capture_output=True, text=True, env=sm.env, check=True
    )
    assert done.stdout == f"{HOSTILE}\napp\n"


def test_get_json_and_table(sm: Sm, name: str) -> None:
    """`-o json` carries the values; the table shows keys and values."""
    sm.ok("secret", "create", name, "k=v1")
    assert sm.json("secret", "get", name)["values"] == {"k": "v1"}
    table = sm.ok("secret", "get", name)
    assert (name in table, "v1" in table) == (True, True)


def test_shell_output_round_trips_through_values_file(sm: Sm, name: str) -> None:
    """`-o shell` output fed to --values-file recreates the values (keys as variables)."""
    sm.ok("secret", "create", name, f"k={HOSTILE}")
    out = sm.ok("secret", "get", name, "-o", "shell")
    sm.ok("secret", "create", f"{name}-copy", "--values-file", "-", input=out)
    assert sm.json("secret", "get", f"{name}-copy")["values"] == {"k": HOSTILE}


def test_version_flag(sm: Sm) -> None:
    """`secretmirror --version` prints the installed version."""
    assert sm.ok("--version").startswith("secretmirror, version ")
