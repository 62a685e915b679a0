"""Consuming secrets from the command line (spec section 15), black-box.

One ``secretmirror serve`` subprocess on its own database serves the module;
every test runs the ``secretmirror`` executable as a subprocess, as a script
or a person would, and uses names of its own.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest
import yaml

from secretmirror.stores.file import file_name
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


# -- export -------------------------------------------------------------------------


def test_export_formats(sm: Sm, name: str) -> None:
    """export prints the selected secrets as variables in each format; keys . and - become _."""
    sm.ok("secret", "create", f"{name}-a", "db.user=app", f"api-key={HOSTILE}")
    sm.ok("secret", "create", f"{name}-b", "PORT=5432")
    expected = {"db_user": "app", "api_key": HOSTILE, "PORT": "5432"}
    selection = ("--name", f"{name}-a", "--name-prefix", f"{name}-b")
    assert json.loads(sm.ok("export", *selection, "-o", "json")) == expected
    assert yaml.safe_load(sm.ok("export", *selection, "-o", "yaml")) == expected
    dotenv = sm.ok("export", *selection)
    assert "db_user=app\n" in dotenv
    sm.ok("secret", "create", f"{name}-back", "--values-file", "-", input=dotenv)
    assert sm.json("secret", "get", f"{name}-back")["values"] == expected
    script = f'eval "$({BIN} export --name-prefix {name}-a -o shell)"; printf %s "$api_key"'
    done = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=sm.env)
    assert done.stdout == HOSTILE


def test_export_collision_names_both_secrets(sm: Sm, name: str) -> None:
    """Two secrets giving one variable is an error naming both, and prints no value."""
    sm.ok("secret", "create", f"{name}-a", "db-user=first")
    sm.ok("secret", "create", f"{name}-b", "db.user=second")
    done = sm("export", "--name-prefix", name)
    assert (done.returncode, done.stdout) == (1, "")
    assert f"{name}-a" in done.stderr
    assert f"{name}-b" in done.stderr
    assert "first" not in done.stderr
    assert "second" not in done.stderr


def test_export_needs_a_selection(sm: Sm) -> None:
    """export without --name or --name-prefix is a usage error."""
    assert sm("export").returncode == 2


def test_export_unknown_name_is_an_error(sm: Sm, name: str) -> None:
    """A --name nobody uses exits 1 naming it."""
    done = sm("export", "--name", name)
    assert done.returncode == 1
    assert name in done.stderr


# -- run ----------------------------------------------------------------------------

PRINT_ENV = "import os, sys; sys.stdout.write(os.environ['db_password'] + '|' + os.environ['PORT'])"


def test_run_puts_the_values_in_the_environment(sm: Sm, name: str) -> None:
    """The child sees every key as a variable; the values are on no command line."""
    sm.ok("secret", "create", name, f"db.password={HOSTILE}", "PORT=5432")
    out = sm.ok("run", "--name", name, "--", sys.executable, "-c", PRINT_ENV)
    assert out == f"{HOSTILE}|5432"


@pytest.mark.parametrize("flags", [(), ("--mask",)])
def test_run_does_not_pass_the_cli_token_on(sm: Sm, name: str, flags: tuple[str, ...]) -> None:
    """The command gets its secrets, not SECRETMIRROR_TOKEN (the right to read all the rest)."""
    sm.ok("secret", "create", name, "k=v")
    script = "import os; print(os.environ.get('SECRETMIRROR_TOKEN'), os.environ['k'])"
    assert sm.ok("run", *flags, "--name", name, "--", sys.executable, "-c", script) == "None v\n"


def test_run_execs_the_command(sm: Sm, name: str) -> None:
    """Without --watch/--mask the command replaces the CLI: same process id."""
    sm.ok("secret", "create", name, "k=v")
    proc = subprocess.Popen(
        [BIN, "run", "--name", name, "--", "sh", "-c", "echo $$"],
        stdout=subprocess.PIPE,
        text=True,
        env=sm.env,
    )
    out, _ = proc.communicate(timeout=60)
    assert int(out) == proc.pid


@pytest.mark.parametrize("flags", [(), ("--mask",)])
def test_run_exits_with_the_commands_code(sm: Sm, name: str, flags: tuple[str, ...]) -> None:
    """run exits with the command's own exit code, exec'd or supervised."""
    sm.ok("secret", "create", name, "k=v")
    assert sm("run", *flags, "--name", name, "--", "sh", "-c", "exit 7").returncode == 7


def test_run_of_a_missing_command_exits_127(sm: Sm, name: str) -> None:
    """A command that does not exist exits 127, as a shell does."""
    sm.ok("secret", "create", name, "k=v")
    done = sm("run", "--name", name, "--", "no-such-command-here")
    assert done.returncode == 127
    assert "no-such-command-here" in done.stderr


def test_run_collision_is_an_error_naming_both(sm: Sm, name: str) -> None:
    """Two selected secrets giving one variable: exit 1 naming both; the command never runs."""
    sm.ok("secret", "create", f"{name}-a", "TOKEN=a-value")
    sm.ok("secret", "create", f"{name}-b", "TOKEN=b-value")
    done = sm("run", "--name-prefix", name, "--", "sh", "-c", "echo ran")
    assert done.returncode == 1
    assert "ran" not in done.stdout
    assert f"{name}-a" in done.stderr
    assert f"{name}-b" in done.stderr


def test_run_mask_hides_values_in_the_output(sm: Sm, name: str) -> None:
    """--mask replaces every injected value in the child's stdout and stderr."""
    sm.ok("secret", "create", name, "TOKEN=hunter2-secret", "OTHER=also-secret")
    done = sm(
        "run", "--mask", "--name", name, "--",
        "sh", "-c", 'echo "token=$TOKEN other=$OTHER"; echo "err $TOKEN" >&2',
    )  # fmt: skip
    assert done.returncode == 0
    assert done.stdout == ("token=<concealed by secretmirror> other=<concealed by secretmirror>\n")
    assert done.stderr == "err <concealed by secretmirror>\n"


def test_run_forwards_signals(sm: Sm, name: str, tmp_path: Path) -> None:
    """SIGTERM to a supervised run reaches the command; run exits with its code."""
    sm.ok("secret", "create", name, "k=v")
    ready = tmp_path / "ready"
    script = f'trap "exit 42" TERM; touch {ready}; while :; do sleep 0.05; done'
    proc = subprocess.Popen(
        [BIN, "run", "--mask", "--name", name, "--", "sh", "-c", script], env=sm.env
    )
    try:
        wait_for(ready.exists, 30, "the command to start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 42
    finally:
        if proc.poll() is None:
            proc.kill()


def test_run_watch_restarts_on_a_change(sm: Sm, name: str, tmp_path: Path) -> None:
    """--watch restarts the command with the new value within 2 s of another client's update."""
    sm.ok("secret", "create", name, "V=one")
    log = tmp_path / "starts"
    script = f'echo "$V" >> {log}; exec sleep 600'
    proc = subprocess.Popen(
        [BIN, "run", "--watch", "--name", name, "--", "sh", "-c", script], env=sm.env
    )
    try:
        wait_for(lambda: log.exists() and log.read_text() == "one\n", 30, "the first start")
        sm.ok("secret", "update", name, "V=two")
        updated = time.monotonic()
        wait_for(lambda: log.read_text() == "one\ntwo\n", 30, "the restart")
        assert time.monotonic() - updated < 2.0
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(30)


def test_run_watch_ignores_other_secrets(sm: Sm, name: str, tmp_path: Path) -> None:
    """A change to a secret that is not selected restarts nothing."""
    sm.ok("secret", "create", name, "V=one")
    log = tmp_path / "starts"
    script = f'echo "$V" >> {log}; exec sleep 600'
    proc = subprocess.Popen(
        [BIN, "run", "--watch", "--name", name, "--", "sh", "-c", script], env=sm.env
    )
    try:
        wait_for(lambda: log.exists() and log.read_text() == "one\n", 30, "the first start")
        sm.ok("secret", "create", f"{name}-other", "V=x")
        sm.ok("secret", "update", name, "V=two")  # a marker that the feed was read past it
        wait_for(lambda: log.read_text() == "one\ntwo\n", 30, "the restart")
    finally:
        proc.terminate()
        proc.wait(30)


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


# -- jobs, status and exit code 4 ---------------------------------------------------


@pytest.fixture
async def ops(
    postgres: TestPostgres, template: str, tmp_path: Path
) -> AsyncIterator[tuple[Sm, Path, str]]:
    """A daemon of its own with a file backup (drift made by hand stays in this test)."""
    db_name = await postgres.create_database(template)
    dsn = postgres.dsn(db_name)
    backup = tmp_path / "backup-store"
    proc = DaemonProcess(
        {
            "SECRETMIRROR_DATABASE_URL": dsn,
            "SECRETMIRROR_ENCRYPTION_KEYS": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
            "SECRETMIRROR_BACKUP__TYPE": "file",
            "SECRETMIRROR_BACKUP__PATH": str(backup),
            "SECRETMIRROR_REPLICATION__POLL_INTERVAL_S": "0.2",
            "SECRETMIRROR_RECONCILE__VERIFY_INTERVAL_S": "0",
        },
        tmp_path / "ops-data",
        tmp_path / "ops.log",
    )
    proc.start(timeout=60)
    try:
        yield Sm(proc.url, tmp_path), backup, dsn
    finally:
        proc.stop()
        await postgres.drop_database(db_name)


def delivered(sm: Sm) -> bool:
    backup = sm.json("status")["replication"]["backup"]
    return bool(backup["pending"] == 0 and backup["applied"] > 0)


def test_reconcile_exits_4_on_drift_and_names_the_secrets(ops: tuple[Sm, Path, str]) -> None:
    """A verify that finds drift exits 4 and names the secrets; a repair leaves none (exit 0)."""
    sm, backup, _ = ops
    sm.ok("secret", "create", "kept", "k=v")
    lost = sm.json("secret", "create", "lost-one", "k=v")
    wait_for(lambda: delivered(sm), 30, "the backup delivery")
    (backup / file_name(lost["id"])).unlink()
    done = sm("reconcile")
    assert done.returncode == 4, done.stderr
    assert "backup missing: lost-one" in done.stdout
    assert "FOUND" in done.stdout
    assert "AFTER" in done.stdout
    repaired = sm("reconcile", "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert sm("reconcile").returncode == 0


def test_status_fits_100_columns_and_says_what_verify_found(ops: tuple[Sm, Path, str]) -> None:
    """status: no line over 100 columns, the last verify in words, exit 0 when all is well."""
    sm, _, dsn = ops
    sm.ok("secret", "create", "one", "k=v")
    wait_for(lambda: delivered(sm), 30, "the backup delivery")
    assert sm("reconcile").returncode == 0
    done = sm("status")
    assert done.returncode == 0, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= 100
    assert "backup in sync (1)" in done.stdout
    assert dsn not in done.stdout


async def test_status_exits_4_with_dead_letters(ops: tuple[Sm, Path, str]) -> None:
    """Dead letters make status exit 4; `dead-letters list` names the secret."""
    sm, _, dsn = ops
    sm.ok("secret", "create", "stuck", "k=v")
    wait_for(lambda: delivered(sm), 30, "the backup delivery")
    conn = await asyncpg.connect(dsn)
    try:  # a delivery that ran out of attempts (what the worker leaves after max_attempts)
        await conn.execute(
            "UPDATE deliveries SET dead = true, version = applied_version + 1, "
            "last_error = 'rejected: refused'"
        )
    finally:
        await conn.close()
    done = sm("status")
    assert done.returncode == 4
    assert "dead-lettered deliveries to backup" in done.stdout
    listed = sm.json("dead-letters", "list")
    assert [(d["target"], d["name"]) for d in listed] == [("backup", "stuck")]
    assert "stuck" in sm.ok("dead-letters", "list")


def test_jobs_list_show_cancel(ops: tuple[Sm, Path, str]) -> None:
    """jobs list shows a finished job; jobs show prints it; cancel answers its status."""
    sm, _, _ = ops
    job = sm.json("reconcile")
    assert job["id"] in sm.ok("jobs", "list")
    assert f"job {job['id']} (verify): succeeded" in sm.ok("jobs", "show", job["id"])
    assert sm.json("jobs", "show", job["id"])["sample_names"] == {}
    assert "succeeded" in sm.ok("jobs", "cancel", job["id"])


def test_token_revoke_by_name(sm: Sm, name: str) -> None:
    """`token revoke NAME` revokes the token of that name."""
    created = sm.json("token", "create", "--name", name)
    sm.ok("token", "revoke", name)
    assert created["id"] not in sm.ok("token", "list")
    assert sm("token", "revoke", name).returncode == 1


def test_history_of_a_deleted_secret(sm: Sm, name: str) -> None:
    """`secret history NAME --deleted` shows the versions of a secret that is gone."""
    sm.ok("secret", "create", name, "k=1")
    sm.ok("secret", "update", name, "k=2")
    sm.ok("secret", "delete", name, "-y")
    assert sm("secret", "history", name).returncode == 1
    items = sm.json("secret", "history", name, "--deleted")
    assert [(i["version"], i["kind"]) for i in items] == [
        (1, "create"),
        (2, "update"),
        (3, "delete"),
    ]


async def test_daemon_stops_promptly_with_long_polls_waiting(
    postgres: TestPostgres, template: str, tmp_path: Path
) -> None:
    """SIGTERM ends the daemon within its 10 s budget while feed requests wait for 60 s."""
    db_name = await postgres.create_database(template)
    proc = DaemonProcess(
        {
            "SECRETMIRROR_DATABASE_URL": postgres.dsn(db_name),
            "SECRETMIRROR_ENCRYPTION_KEYS": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
        },
        tmp_path / "data",
        tmp_path / "daemon.log",
    )
    proc.start(timeout=60)
    answers: list[Any] = []
    pollers = [
        threading.Thread(target=_long_poll, args=(proc.url, answers), daemon=True) for _ in range(5)
    ]
    try:
        for poller in pollers:
            poller.start()
        assert proc.proc is not None
        daemon = psutil.Process(proc.proc.pid)
        wait_for(lambda: _open_connections(daemon, proc.port) >= 5, 30, "the long polls")
        assert proc.terminate() < 10
        for poller in pollers:
            poller.join(10)
            assert not poller.is_alive()
        assert [a["events"] for a in answers] == [[]] * 5  # answered, not cut off
    finally:
        proc.stop()
        await postgres.drop_database(db_name)


def _long_poll(url: str, answers: list[Any]) -> None:
    request = urllib.request.Request(
        f"{url}/api/v1/events?wait=60", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        answers.append(json.loads(urllib.request.urlopen(request, timeout=90).read()))


def _open_connections(daemon: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in daemon.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )
