"""The ``secretmirror`` client commands, run with click's CliRunner against a live server.

The server is the real aiohttp app on a free port of 127.0.0.1 (the CLI talks
plain HTTP to it); each CLI call runs in a worker thread so the server keeps
serving on the test's event loop meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from click.testing import CliRunner, Result

from secretmirror import cli, client
from secretmirror.daemon import make_app
from secretmirror.output import startup_banner
from secretmirror.runtime import Runtime
from secretmirror.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.net import free_port

SHELL_HOSTILE = 'it\'s "quoted" $HOME `x`\nsecond line\t=tab'


class Cli:
    """Runs ``secretmirror ...`` against one server, as the admin by default."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.data_dir = data_dir

    async def __call__(
        self, *args: str, token: str | None = ADMIN_TOKEN, input: str | None = None
    ) -> Result:
        env = {
            "SECRETMIRROR_URL": self.url,
            "SECRETMIRROR_TOKEN": token,
            "SECRETMIRROR_DATA_DIR": str(self.data_dir),
        }
        runner = CliRunner()
        return await asyncio.to_thread(
            runner.invoke, cli.main, list(args), env=env, input=input, catch_exceptions=False
        )

    async def ok(
        self, *args: str, token: str | None = ADMIN_TOKEN, input: str | None = None
    ) -> str:
        """Run, assert exit code 0, return stdout."""
        result = await self(*args, token=token, input=input)
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return result.stdout

    async def json(self, *args: str, token: str | None = ADMIN_TOKEN) -> Any:
        return json.loads(await self.ok(*args, "-o", "json", token=token))


@pytest.fixture
def server_logs() -> Iterator[list[MutableMapping[str, Any]]]:
    """The server's log lines, kept out of stdout (which CliRunner captures for the CLI)."""
    with structlog.testing.capture_logs() as logs:
        yield logs


@pytest.fixture
async def server_url(
    runtime: Runtime, server_logs: list[MutableMapping[str, Any]]
) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(runtime), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def run(server_url: str, tmp_path: Path) -> Cli:
    return Cli(server_url, tmp_path / "cli-data")


# -- secrets ------------------------------------------------------------------


async def test_create_then_get_json_returns_the_values(run: Cli) -> None:
    """`secret create NAME K=V ...` stores the values that `secret get -o json` shows."""
    await run.ok("secret", "create", "db", "user=app", "password=a=b")
    body = await run.json("secret", "get", "db")
    assert body["values"] == {"user": "app", "password": "a=b"}


async def test_create_prints_a_line_without_values(run: Cli) -> None:
    """The human output of create names the secret and its version, never a value."""
    out = await run.ok("secret", "create", "db", "password=hunter2")
    assert out == "created secret db (version 1)\n"


async def test_create_json_leaves_values_out(run: Cli) -> None:
    """`secret create -o json` prints the metadata for scripts, without the values."""
    body = await run.json("secret", "create", "db", "password=hunter2")
    assert (body["name"], body["version"], body["private"]) == ("db", 1, False)
    assert "values" not in body


async def test_create_private(run: Cli) -> None:
    """`--private` creates a private secret."""
    await run.ok("secret", "create", "mine", "k=v", "--private")
    assert (await run.json("secret", "get", "mine"))["private"] is True


async def test_create_from_json_values_file_on_stdin(run: Cli) -> None:
    """`--values-file -` reads a JSON object from stdin."""
    values = {"a": "1", "b": SHELL_HOSTILE}
    await run.ok("secret", "create", "s", "--values-file", "-", input=json.dumps(values))
    assert values == (await run.json("secret", "get", "s"))["values"]


async def test_arguments_win_over_the_values_file(run: Cli, tmp_path: Path) -> None:
    """A KEY=VALUE argument overrides the same key from --values-file."""
    path = tmp_path / "values.json"
    path.write_text(json.dumps({"a": "file", "b": "file"}))
    await run.ok("secret", "create", "s", "--values-file", str(path), "a=arg")
    assert (await run.json("secret", "get", "s"))["values"] == {"a": "arg", "b": "file"}


async def test_get_env_round_trips_through_values_file(run: Cli) -> None:
    """`secret get -o env` output, fed back with --values-file, recreates the same values."""
    values = {"plain": "x", "hostile": SHELL_HOSTILE, "empty": ""}
    await run.ok("secret", "create", "src", "--values-file", "-", input=json.dumps(values))
    env = await run.ok("secret", "get", "src", "-o", "env")
    await run.ok("secret", "create", "copy", "--values-file", "-", input=env)
    assert values == (await run.json("secret", "get", "copy"))["values"]


async def test_get_env_prints_shell_quoted_lines(run: Cli) -> None:
    """`-o env` prints one KEY=value line per key, sorted, quoted for a shell."""
    await run.ok("secret", "create", "s", "b=two words", "a=1")
    assert await run.ok("secret", "get", "s", "-o", "env") == "a=1\nb='two words'\n"


async def test_get_table_shows_keys_and_values(run: Cli) -> None:
    """The table output of get shows the name, each key and its value."""
    await run.ok("secret", "create", "s", "color=[bold]red")
    out = await run.ok("secret", "get", "s")
    assert ("s" in out, "color" in out, "[bold]red" in out) == (True, True, True)


async def test_get_an_older_version(run: Cli) -> None:
    """`--version N` reads an older version."""
    await run.ok("secret", "create", "s", "k=one")
    await run.ok("secret", "update", "s", "k=two")
    body = await run.json("secret", "get", "s", "--version", "1")
    assert body["values"] == {"k": "one"}


async def test_list_shows_every_secret_across_pages(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`secret list` follows next_cursor until every secret is listed."""
    monkeypatch.setattr(client, "PAGE_SIZE", 2)
    for i in range(5):
        await run.ok("secret", "create", f"s{i}", "k=v")
    items = await run.json("secret", "list")
    assert [f"s{i}" for i in range(5)] == [item["name"] for item in items]


async def test_list_never_carries_values(run: Cli) -> None:
    """`secret list -o json` is metadata only."""
    await run.ok("secret", "create", "s", "k=hunter2")
    out = await run.ok("secret", "list", "-o", "json")
    assert "hunter2" not in out


async def test_list_name_prefix(run: Cli) -> None:
    """`--name-prefix` lists only the names that start with it."""
    for name in ("app-db", "app-api", "other"):
        await run.ok("secret", "create", name, "k=v")
    items = await run.json("secret", "list", "--name-prefix", "app-")
    assert [item["name"] for item in items] == ["app-api", "app-db"]


async def test_list_table_names_the_secrets(run: Cli) -> None:
    """The table output of list names each secret."""
    await run.ok("secret", "create", "alpha", "k=v")
    await run.ok("secret", "create", "beta", "k=v")
    out = await run.ok("secret", "list")
    assert ("alpha" in out, "beta" in out) == (True, True)


async def test_tables_show_whole_ids_off_a_terminal(run: Cli) -> None:
    """Piped, a table still shows every id whole (the next command needs it)."""
    created = await run.json("secret", "create", "a-rather-long-secret-name-for-width", "k=v")
    token = await run.json("token", "create", "--name", "a-rather-long-token-name")
    assert created["id"] in await run.ok("secret", "list")
    assert token["id"] in await run.ok("token", "list")


async def test_update_merges_keys(run: Cli) -> None:
    """`secret update NAME K=V` sets K and keeps every other key."""
    await run.ok("secret", "create", "s", "a=1", "b=2")
    await run.ok("secret", "update", "s", "b=3", "c=4")
    body = await run.json("secret", "get", "s")
    assert (body["version"], body["values"]) == (2, {"a": "1", "b": "3", "c": "4"})


async def test_update_remove_key(run: Cli) -> None:
    """`--remove-key K` removes K (PATCH with null)."""
    await run.ok("secret", "create", "s", "a=1", "b=2", "c=3")
    await run.ok("secret", "update", "s", "--remove-key", "a", "--remove-key", "c")
    assert (await run.json("secret", "get", "s"))["values"] == {"b": "2"}


async def test_update_setting_and_removing_one_key_is_usage_error(run: Cli) -> None:
    """Setting and removing the same key in one update is refused with exit code 2."""
    await run.ok("secret", "create", "s", "a=1")
    result = await run("secret", "update", "s", "a=2", "--remove-key", "a")
    assert result.exit_code == 2


async def test_update_with_nothing_to_change_is_usage_error(run: Cli) -> None:
    """An update without any change is refused with exit code 2."""
    await run.ok("secret", "create", "s", "a=1")
    assert (await run("secret", "update", "s")).exit_code == 2


async def test_rename_moves_the_name(run: Cli) -> None:
    """`secret rename OLD NEW` keeps the values under the new name."""
    await run.ok("secret", "create", "old", "k=v")
    await run.ok("secret", "rename", "old", "new")
    assert (await run.json("secret", "get", "new"))["values"] == {"k": "v"}
    assert (await run("secret", "get", "old")).exit_code == 1


async def test_delete_with_yes(run: Cli) -> None:
    """`secret delete NAME -y` deletes without asking."""
    await run.ok("secret", "create", "s", "k=v")
    assert await run.ok("secret", "delete", "s", "-y") == "deleted secret s\n"
    assert await run.json("secret", "list") == []


async def test_delete_without_yes_off_a_terminal_is_refused(run: Cli) -> None:
    """Without -y and without a terminal to ask on, delete refuses (exit 2) and keeps the secret."""
    await run.ok("secret", "create", "s", "k=v")
    result = await run("secret", "delete", "s")
    assert result.exit_code == 2
    assert [item["name"] for item in await run.json("secret", "list")] == ["s"]


async def test_delete_on_a_terminal_asks_and_no_keeps(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, delete asks; answering no keeps the secret."""
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    await run.ok("secret", "create", "s", "k=v")
    result = await run("secret", "delete", "s", input="n\n")
    assert result.exit_code == 1
    assert [item["name"] for item in await run.json("secret", "list")] == ["s"]


async def test_delete_on_a_terminal_asks_and_yes_deletes(
    run: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, delete asks; answering yes deletes."""
    monkeypatch.setattr(cli, "_interactive", lambda: True)
    await run.ok("secret", "create", "s", "k=v")
    await run.ok("secret", "delete", "s", input="y\n")
    assert await run.json("secret", "list") == []


async def test_history_lists_each_change(run: Cli) -> None:
    """`secret history NAME` lists one event per version, oldest first."""
    await run.ok("secret", "create", "s", "k=1")
    await run.ok("secret", "update", "s", "k=2")
    await run.ok("secret", "rename", "s", "t")
    items = await run.json("secret", "history", "t")
    assert [event["version"] for event in items] == [1, 2, 3]
    assert {"admin"} == {event["actor"] for event in items}


async def test_history_never_carries_values(run: Cli) -> None:
    """`secret history` shows no value, in either output."""
    await run.ok("secret", "create", "s", "k=hunter2")
    out = await run.ok("secret", "history", "s") + await run.ok(
        "secret", "history", "s", "-o", "json"
    )
    assert "hunter2" not in out


async def test_a_name_shared_and_private_is_ambiguous(run: Cli) -> None:
    """When a shared and a private secret share a name, the CLI asks for the id (exit 1)."""
    await run.ok("secret", "create", "twin", "k=shared")
    private = await run.json("secret", "create", "twin", "k=private", "--private")
    result = await run("secret", "get", "twin")
    assert result.exit_code == 1
    assert "give the id" in result.stderr
    assert (await run.json("secret", "get", private["id"]))["values"] == {"k": "private"}


# -- errors -------------------------------------------------------------------


async def test_get_of_a_missing_name_is_exit_1_with_one_line(run: Cli) -> None:
    """A name that does not exist: exit 1 and one `error:` line on stderr."""
    result = await run("secret", "get", "nope")
    assert (
        result.exit_code,
        result.stderr,
        result.stdout,
    ) == (1, "error: no secret named 'nope'\n", "")


async def test_duplicate_create_prints_the_servers_message(run: Cli) -> None:
    """A 409 from the server: exit 1 with the server's message on one line."""
    await run.ok("secret", "create", "s", "k=v")
    result = await run("secret", "create", "s", "k=v")
    assert (
        result.exit_code,
        result.stderr,
    ) == (1, "error: A secret with this name already exists.\n")


async def test_a_reader_cannot_create(run: Cli) -> None:
    """A 403 from the server is exit 1 with its message."""
    await run.ok("user", "create", "rita", "--role", "reader")
    token = (await run.json("token", "create", "--user", "rita", "--name", "t"))["token"]
    result = await run("secret", "create", "s", "k=v", token=token)
    assert (result.exit_code, result.stderr) == (1, "error: readers cannot change secrets\n")


async def test_no_token_is_401_with_a_hint(run: Cli) -> None:
    """Without any token the error says how to give one."""
    result = await run("secret", "list", token=None)
    assert result.exit_code == 1
    assert "SECRETMIRROR_TOKEN" in result.stderr


async def test_the_admin_token_file_is_the_default_token(run: Cli) -> None:
    """Without SECRETMIRROR_TOKEN the CLI reads <data dir>/admin-token."""
    run.data_dir.mkdir(parents=True)
    (run.data_dir / "admin-token").write_text(ADMIN_TOKEN + "\n")
    await run.ok("secret", "create", "s", "k=v", token=None)
    assert [item["name"] for item in await run.json("secret", "list", token=None)] == ["s"]


async def test_an_unreachable_server_is_exit_1(tmp_path: Path) -> None:
    """A server that does not answer: exit 1 with the URL in the message."""
    url = f"http://127.0.0.1:{free_port()}"
    result = await Cli(url, tmp_path)("secret", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: cannot reach secretmirror at {url}")


async def test_a_value_without_a_key_is_usage_error_and_not_echoed(run: Cli) -> None:
    """An argument without `=` is exit 2, and the argument (maybe a secret) is not echoed."""
    result = await run("secret", "create", "s", "hunter2")
    assert result.exit_code == 2
    assert "hunter2" not in result.stderr


async def test_a_non_http_url_is_refused(tmp_path: Path) -> None:
    """SECRETMIRROR_URL must be http(s): a file: URL is exit 1, never opened."""
    result = await Cli("file:///etc/passwd", tmp_path)("secret", "list")
    assert (result.exit_code, result.stdout) == (1, "")


# -- operations, users, tokens -------------------------------------------------


async def test_status_json(run: Cli) -> None:
    """`status -o json` is the server's status document."""
    body = await run.json("status")
    assert body["stores"]["primary"]["type"] == "sql"


async def test_status_table(run: Cli) -> None:
    """`status` prints the stores as a table."""
    out = await run.ok("status")
    assert ("primary" in out, "sql" in out) == (True, True)


async def test_dead_letters_retry(run: Cli) -> None:
    """`dead-letters retry` reports how many deliveries it requeued."""
    assert await run.json("dead-letters", "retry") == {"requeued": 0}


async def test_user_create(run: Cli) -> None:
    """`user create NAME --role ROLE` creates the user."""
    body = await run.json("user", "create", "wendy", "--role", "writer")
    assert (body["name"], body["role"]) == ("wendy", "writer")
    assert "wendy" in [u["name"] for u in await run.json("user", "list")]


async def test_user_create_rejects_an_unknown_role(run: Cli) -> None:
    """An unknown role is a usage error."""
    assert (await run("user", "create", "x", "--role", "root")).exit_code == 2


async def test_token_create_prints_only_the_token_on_stdout(run: Cli) -> None:
    """`token create` prints the token alone on stdout, so $(...) captures it."""
    result = await run("token", "create", "--name", "ci")
    token = result.stdout.strip()
    assert (result.exit_code, len(result.stdout.splitlines())) == (0, 1)
    assert "shown only this once" in result.stderr
    await run.ok("secret", "list", token=token)


async def test_token_create_for_a_user_acts_as_that_user(run: Cli) -> None:
    """An admin creates a token for another user; writes with it are that user's, made
    through the admin (spec section 13: the actor names both)."""
    await run.ok("user", "create", "wendy", "--role", "writer")
    token = (await run.json("token", "create", "--user", "wendy", "--name", "t"))["token"]
    await run.ok("secret", "create", "s", "k=v", token=token)
    assert [e["actor"] for e in await run.json("secret", "history", "s")] == ["wendy via admin"]


async def test_token_expires_in_sets_the_expiry(run: Cli) -> None:
    """`--expires-in 30d` sends 30 days; the token reports an expiry."""
    body = await run.json("token", "create", "--name", "short", "--expires-in", "30d")
    assert body["expires"] is not None


async def test_token_expires_in_rejects_nonsense(run: Cli) -> None:
    """A duration that does not parse is a usage error."""
    assert (await run("token", "create", "--name", "t", "--expires-in", "soon")).exit_code == 2


async def test_token_list_never_shows_the_token(run: Cli) -> None:
    """`token list` lists the token by id and name, never the token string."""
    created = await run.json("token", "create", "--name", "ci")
    out = await run.ok("token", "list", "-o", "json") + await run.ok("token", "list")
    assert created["id"] in out
    assert created["token"] not in out


async def test_token_revoke_closes_the_token(run: Cli) -> None:
    """A revoked token is refused (exit 1)."""
    created = await run.json("token", "create", "--name", "ci")
    await run.ok("token", "revoke", created["id"])
    assert (await run("secret", "list", token=created["token"])).exit_code == 1


async def test_revoking_an_unknown_token_is_exit_1(run: Cli) -> None:
    """Revoking a token that does not exist prints the server's 404 message."""
    result = await run("token", "revoke", "00000000-0000-0000-0000-000000000000")
    assert (result.exit_code, result.stderr) == (1, "error: no such token\n")


# -- pure parts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 2592000), ("12h", 43200), ("15m", 900), ("90s", 90), ("1h30m", 5400), ("45", 45)],
)
def test_parse_duration(text: str, seconds: int) -> None:
    """Durations are a number with d/h/m/s (or w), combinable, or bare seconds."""
    assert seconds == cli.parse_duration(text)


@pytest.mark.parametrize("text", ["", "d", "10x", "0s", "1h 30m", "-5m"])
def test_parse_duration_rejects(text: str) -> None:
    """Anything else is refused."""
    with pytest.raises(ValueError, match="duration"):
        cli.parse_duration(text)


def test_help_names_the_env_variable_of_each_option() -> None:
    """`--help` names SECRETMIRROR_URL for --url and SECRETMIRROR_CONFIG for --config."""
    runner = CliRunner()
    main_help = runner.invoke(cli.main, ["--help"]).stdout
    serve_help = runner.invoke(cli.main, ["serve", "--help"]).stdout
    assert ("SECRETMIRROR_URL" in main_help, "SECRETMIRROR_TOKEN" in main_help) == (True, True)
    assert "SECRETMIRROR_CONFIG" in serve_help


def test_banner_points_at_the_admin_token_file(tmp_path: Path) -> None:
    """The start-up message names the URL, the admin-token path and a first command."""
    settings = Settings(data_dir=tmp_path, listen="127.0.0.1:8750")
    banner = startup_banner(settings, "http")
    assert "http://127.0.0.1:8750" in banner
    assert f"cat {tmp_path / 'admin-token'}" in banner
    assert "secret create demo" in banner


def test_banner_never_prints_a_configured_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SECRETMIRROR_ADMIN_TOKEN set, the message names the variable, not the token."""
    canary = "smt_canary-token-value-0123456789"
    monkeypatch.setenv("SECRETMIRROR_ADMIN_TOKEN", canary)
    banner = startup_banner(Settings(data_dir=tmp_path), "http")
    assert canary not in banner
    assert "from SECRETMIRROR_ADMIN_TOKEN" in banner
