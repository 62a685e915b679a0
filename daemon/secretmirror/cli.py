"""The ``secretmirror`` command line: the daemon and a client of its HTTP API.

The client commands address secrets by name: a name is resolved to an id with
``GET /api/v1/secrets?name=`` (metadata only) before the call that needs the id.
They print tables for people and, with ``-o json``, JSON for scripts.

Exit codes: 0 success, 1 error (one line on stderr, the server's message when
it sent one), 2 usage, 3 a job finished with failures, 4 the command worked and
found a problem (drift left after reconcile; a store down or dead letters in
status).
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, NoReturn, TypeVar

import click

from secretmirror import db, runner
from secretmirror import logging as sm_logging
from secretmirror import output as show
from secretmirror.client import (
    DEFAULT_URL,
    URL_ENV,
    Client,
    ClientError,
    default_token,
)
from secretmirror.errors import SecretMirrorError
from secretmirror.settings import load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
#: A job (backup, restore, reconcile) finished, but some secrets failed.
EXIT_JOB_FAILED = 3
#: The command worked and found a problem: drift left after a reconcile, a store down or
#: dead letters in status.
EXIT_FOUND_PROBLEM = 4


class CliError(click.ClickException):
    """An error to print as one ``error: ...`` line on stderr, exiting with 1."""

    exit_code = EXIT_ERROR

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _Main(click.Group):
    """Turns a failed request anywhere below into a one-line error and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClientError as exc:
            raise CliError(str(exc)) from None


@dataclass
class _Options:
    url: str
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.url, default_token())
        return self._client


def _api() -> Client:
    return click.get_current_context().ensure_object(_Options).client()


@click.group(cls=_Main)
@click.version_option(package_name="secretmirror", prog_name="secretmirror")
@click.option(
    "--url",
    envvar=URL_ENV,
    default=DEFAULT_URL,
    show_default=True,
    help=f"URL of the secretmirror server (env: {URL_ENV}).",
)
@click.pass_context
def main(ctx: click.Context, url: str) -> None:
    """secretmirror: secrets with a mirrored backup store.

    Client commands send the token in SECRETMIRROR_TOKEN; without it, the
    admin token file <data dir>/admin-token when it is readable (data dir:
    SECRETMIRROR_DATA_DIR, default ~/.local/share/secretmirror).
    """
    ctx.obj = _Options(url)


# -- shared parameters --------------------------------------------------------


def _key_values(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """``KEY=VALUE`` arguments as pairs (a value may be empty and may contain ``=``)."""
    pairs = []
    for text in value:
        key, sep, val = text.partition("=")
        if not sep or not key:
            # The argument is not echoed: it may be a secret value typed without its key.
            raise click.BadParameter(
                "every value must be given as KEY=VALUE with a non-empty KEY", ctx, param
            )
        pairs.append((key, val))
    return tuple(pairs)


_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+)([wdhms])")


def parse_duration(text: str) -> int:
    """Seconds in ``30d``, ``12h``, ``15m``, ``90s``, ``1h30m`` or a bare number of seconds."""
    text = text.strip().lower()
    if text.isdigit():
        seconds = int(text)
    else:
        parts = _DURATION_PART.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration like 30d, 12h, 15m or 90s")
        seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds < 1:
        raise ValueError("a duration must be at least 1s")
    return seconds


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def output_option(*formats: str) -> Callable[[F], F]:
    formats = formats or show.FORMATS
    return click.option(
        "-o",
        "--output",
        type=click.Choice(formats),
        default="table",
        show_default=True,
        help="table for people, json for scripts"
        + (", env for KEY=value lines" if "env" in formats else "")
        + (", shell for export KEY='value' lines" if "shell" in formats else "")
        + ".",
    )


_values_file_option = click.option(
    "--values-file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    metavar="FILE|-",
    help="Read values from a file (- for stdin): a JSON object, a YAML mapping, or "
    "KEY=VALUE lines as printed by `secret get -o env` (or `-o shell`).",
)

#: The first line of a file of KEY=VALUE lines (``-o env``) or ``export KEY=...`` (``-o shell``).
_ENV_LINE = re.compile(r"(export\s+)?[A-Za-z0-9_.-]+=")


def read_values_file(handle: IO[str]) -> dict[str, str]:
    """A JSON object, shell-quoted ``KEY=VALUE`` lines (``-o env``/``-o shell``), or YAML.

    The format is told from the content: ``{`` starts JSON, a first line of the
    form ``KEY=`` (or ``export KEY=``) the lines, anything else YAML.
    """
    text = handle.read()
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            raise click.BadParameter("is not valid JSON", param_hint="--values-file") from None
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise click.BadParameter(
                "must be a JSON object of string values", param_hint="--values-file"
            )
        return data
    first = next(
        (ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")),
        "",
    )
    if not first or _ENV_LINE.match(first):
        return _read_env_lines(text)
    return _read_yaml(text)


def _read_env_lines(text: str) -> dict[str, str]:
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--values-file") from None
    values: dict[str, str] = {}
    for token in tokens:
        if token == "export":  # noqa: S105 - the shell keyword in `-o shell` lines
            continue
        key, sep, val = token.partition("=")
        if not sep or not key:
            # Never echo the token: it may be part of a secret value.
            raise click.BadParameter(
                "holds an entry that is not KEY=VALUE (quote values with spaces)",
                param_hint="--values-file",
            )
        values[key] = val
    return values


def _read_yaml(text: str) -> dict[str, str]:
    """A YAML mapping of scalars; every scalar is kept as written (``5432``, ``yes``, ``0x1``).

    YAML's own typing would turn ``on: yes`` into ``True`` and ``zip: 01234`` into
    1234; a secret value must come back exactly as it was typed.
    """
    import yaml

    try:
        data = yaml.load(text, Loader=yaml.BaseLoader)  # noqa: S506 - BaseLoader builds no objects
    except yaml.YAMLError:
        # The parser's message quotes the offending text, which may be a value.
        raise click.BadParameter(
            "is neither JSON, KEY=VALUE lines nor valid YAML", param_hint="--values-file"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise click.BadParameter(
            "must be a YAML mapping of keys to plain values (no lists or nested mappings)",
            param_hint="--values-file",
        )
    return data


def collect_values(
    pairs: tuple[tuple[str, str], ...], values_file: IO[str] | None
) -> dict[str, str]:
    """Values from ``--values-file`` first, then ``KEY=VALUE`` arguments (which win).

    An argument's value ``@FILE`` is the content of FILE, ``@-`` is stdin, and
    ``\\@...`` is a literal value starting with ``@``.
    """
    values = read_values_file(values_file) if values_file is not None else {}
    stdin_used = values_file is not None and getattr(values_file, "name", None) == "<stdin>"
    for key, raw in pairs:
        if raw.startswith("\\@"):
            values[key] = raw[1:]
        elif raw == "@-":
            if stdin_used:
                raise click.UsageError("stdin can give only one value (@- or --values-file -)")
            stdin_used = True
            values[key] = sys.stdin.read()
        elif raw.startswith("@"):
            values[key] = _read_value_file(key, raw[1:])
        else:
            values[key] = raw
    return values


def _read_value_file(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError:
        raise click.BadParameter(
            f"{path} is not UTF-8 text (store binary data base64-encoded)", param_hint=key
        ) from None
    except OSError as exc:
        raise click.BadParameter(f"cannot read {path}: {exc.strerror}", param_hint=key) from None


def _without_values(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "values"}


def _report(body: dict[str, Any], fmt: str, message: str) -> None:
    """The result of a change: a line for people, the secret's metadata for scripts.

    Values are left out: the caller just sent them, and output may end up in a log.
    """
    if fmt == "json":
        show.emit_json(_without_values(body))
    else:
        click.echo(message)


def _interactive() -> bool:
    return sys.stdin.isatty()


# -- the daemon ---------------------------------------------------------------


@main.command()
@click.option(
    "--config",
    "config_file",
    envvar="SECRETMIRROR_CONFIG",
    default=None,
    help="TOML configuration file (env: SECRETMIRROR_CONFIG).",
)
def serve(config_file: str | None) -> None:
    """Run the daemon: API, replication and scheduler."""
    from secretmirror import daemon

    sm_logging.configure()
    try:
        settings = load_settings(config_file)
        daemon.run(settings)
    except SecretMirrorError as exc:
        raise CliError(exc.message) from None


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option(
    "--config",
    "config_file",
    envvar="SECRETMIRROR_CONFIG",
    default=None,
    help="TOML configuration file (env: SECRETMIRROR_CONFIG).",
)
def db_upgrade(config_file: str | None) -> None:
    """Apply pending migrations (safe to run from several processes at once)."""
    sm_logging.configure()

    async def run() -> list[int]:
        settings = load_settings(config_file)
        embedded = None
        dsn = settings.database_url.get_secret_value() if settings.database_url else None
        if dsn is None:
            embedded = db.EmbeddedPostgres(settings.data_dir)
            dsn = await embedded.astart()
        try:
            async with db.connect(dsn) as conn:
                return await db.upgrade(conn)
        finally:
            if embedded is not None:
                embedded.stop()

    try:
        applied = asyncio.run(run())
    except SecretMirrorError as exc:
        raise CliError(exc.message) from None
    click.echo(f"applied {len(applied)} migration(s)" if applied else "schema is current")


# -- secrets ------------------------------------------------------------------


@main.group()
def secret() -> None:
    """Create, read, change and delete secrets (by name)."""


@secret.command("create")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...", callback=_key_values)
@_values_file_option
@click.option("--private", is_flag=True, help="Visible to its owner only.")
@output_option()
def secret_create(
    name: str,
    pairs: tuple[tuple[str, str], ...],
    values_file: IO[str] | None,
    private: bool,
    output: str,
) -> None:
    """Create the secret NAME with the given values."""
    values = collect_values(pairs, values_file)
    if not values:
        raise click.UsageError("give at least one KEY=VALUE or --values-file")
    body = _api().request(
        "POST", "/api/v1/secrets", body={"name": name, "values": values, "private": private}
    )
    _report(body, output, f"created secret {body['name']} (version {body['version']})")


def _read_secret(api: Client, name: str, version: int | None) -> Any:
    """The secret NAME with its values, in one request by name when it can be.

    By name needs only the ``read`` scope, so a CI token limited to reading its own
    secrets works here (resolving the name through the list would need ``list`` too).
    A name that is ambiguous or not found goes the long way, for its clearer errors.
    """
    if version is None:
        try:
            return api.get(f"/api/v1/secrets/by-name/{urllib.parse.quote(name, safe='')}")
        except ClientError as exc:
            if exc.status not in (404, 409):
                raise
    return api.get(f"/api/v1/secrets/{api.secret_id(name)}", version=version)


@secret.command("get")
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), default=None, help="An older version.")
@click.option(
    "--key",
    default=None,
    help="Print this key's value alone (a newline follows it only on a terminal).",
)
@output_option("table", "json", "env", "shell")
def secret_get(name: str, version: int | None, key: str | None, output: str) -> None:
    """Show the secret NAME with its values.

    -o env prints KEY=value lines (dotenv; keys as stored), -o shell prints
    `export KEY='value'` lines for `eval` (. and - in keys become _).
    """
    if key is not None and output != "table":
        raise click.UsageError("--key prints one value: it does not go with -o")
    body = _read_secret(_api(), name, version)
    if key is not None:
        if key not in body["values"]:
            raise CliError(f"secret {body['name']} has no key {key!r}")
        show.emit_value(body["values"][key])
    elif output == "json":
        show.emit_json(body)
    elif output == "env":
        show.emit_env(body["values"])
    elif output == "shell":
        _emit_shell(body["values"])
    else:
        show.secret(body)


def _emit_shell(values: dict[str, str]) -> None:
    try:
        show.emit_shell(values)
    except ValueError as exc:
        raise CliError(str(exc)) from None


@secret.command("list")
@click.option("--name-prefix", default=None, help="Only names that start with this.")
@output_option()
def secret_list(name_prefix: str | None, output: str) -> None:
    """List the secrets you can see (metadata only, never values)."""
    items = list(_api().pages("/api/v1/secrets", name_prefix=name_prefix))
    if output == "json":
        show.emit_json(items)
    else:
        show.secrets(items)


@secret.command("update")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="[KEY=VALUE]...", callback=_key_values)
@click.option(
    "--remove-key", "remove_keys", multiple=True, metavar="KEY", help="Remove KEY (repeatable)."
)
@_values_file_option
@output_option()
def secret_update(
    name: str,
    pairs: tuple[tuple[str, str], ...],
    remove_keys: tuple[str, ...],
    values_file: IO[str] | None,
    output: str,
) -> None:
    """Set or remove keys of the secret NAME; keys not named keep their values."""
    changes: dict[str, str | None] = dict(collect_values(pairs, values_file))
    for key in remove_keys:
        if key in changes:
            raise click.UsageError(f"key {key!r} is both set and removed")
        changes[key] = None
    if not changes:
        raise click.UsageError("give at least one KEY=VALUE, --remove-key or --values-file")
    api = _api()
    body = api.request("PATCH", f"/api/v1/secrets/{api.secret_id(name)}", body={"values": changes})
    _report(body, output, f"updated secret {body['name']} (version {body['version']})")


@secret.command("rename")
@click.argument("name")
@click.argument("new_name")
@output_option()
def secret_rename(name: str, new_name: str, output: str) -> None:
    """Rename the secret NAME to NEW_NAME."""
    api = _api()
    body = api.request("PATCH", f"/api/v1/secrets/{api.secret_id(name)}", body={"name": new_name})
    _report(body, output, f"renamed secret {name} to {body['name']} (version {body['version']})")


@secret.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def secret_delete(name: str, yes: bool) -> None:
    """Delete the secret NAME (asks first unless -y)."""
    if not yes:
        if not _interactive():
            raise click.UsageError("not asking on a non-interactive stdin: pass -y to delete")
        click.confirm(f"Delete secret {name!r}?", abort=True)
    api = _api()
    api.request("DELETE", f"/api/v1/secrets/{api.secret_id(name)}")
    click.echo(f"deleted secret {name}")


@secret.command("history")
@click.argument("name")
@click.option("--deleted", is_flag=True, help="The history of the last deleted secret called NAME.")
@output_option()
def secret_history(name: str, deleted: bool, output: str) -> None:
    """The changes to the secret NAME: version, kind, actor, time (never values)."""
    api = _api()
    if deleted:
        quoted = urllib.parse.quote(name, safe="")
        items = api.get(f"/api/v1/secrets/by-name/{quoted}/history", deleted="true")["items"]
    else:
        items = api.get(f"/api/v1/secrets/{api.secret_id(name)}/history")["items"]
    if output == "json":
        show.emit_json(items)
    else:
        show.history(items)


# -- secrets into applications: export and run ---------------------------------

_select_options = [
    click.option(
        "--name",
        "names",
        multiple=True,
        metavar="NAME",
        help="A secret to take (repeatable).",
    ),
    click.option(
        "--name-prefix",
        "prefixes",
        multiple=True,
        metavar="PREFIX",
        help="Every secret whose name starts with PREFIX (repeatable).",
    ),
]


def _select_option(function: F) -> F:
    for option in reversed(_select_options):
        function = option(function)
    return function


def _selected(api: Client, names: tuple[str, ...], prefixes: tuple[str, ...]) -> list[Any]:
    """The selected secrets with their values: one request per name, one per page of a prefix."""
    if not names and not prefixes:
        raise click.UsageError("select secrets with --name or --name-prefix")
    found: dict[str, Any] = {}
    for name in names:
        try:
            body = api.get(f"/api/v1/secrets/by-name/{urllib.parse.quote(name, safe='')}")
        except ClientError as exc:
            if exc.code == "ambiguous_name":
                raise CliError(
                    f"you can see a private and a shared secret named {name!r}; rename one of them"
                ) from None
            if exc.status == 404:
                raise CliError(f"no secret named {name!r}") from None
            raise
        found[body["id"]] = body
    for prefix in prefixes:
        for body in api.pages("/api/v1/secrets", name_prefix=prefix, values="true"):
            found[body["id"]] = body
    return sorted(found.values(), key=lambda b: (b["name"], b["id"]))


def _environment(secrets: list[Any]) -> dict[str, str]:
    try:
        return runner.environment(secrets)
    except runner.SelectionError as exc:
        raise CliError(str(exc)) from None


@main.command("export")
@_select_option
@click.option(
    "-o",
    "--output",
    type=click.Choice(("dotenv", "json", "yaml", "shell")),
    default="dotenv",
    show_default=True,
    help="dotenv NAME=value lines, a JSON or YAML object, or shell export lines for eval.",
)
def export(names: tuple[str, ...], prefixes: tuple[str, ...], output: str) -> None:
    """Print the selected secrets as environment variables.

    Every key becomes a variable (. and - turn into _); two secrets setting one
    variable is an error naming both.
    """
    env = _environment(_selected(_api(), names, prefixes))
    if output == "json":
        show.emit_json(env)
    elif output == "yaml":
        show.emit_yaml(env)
    elif output == "shell":
        _emit_shell(env)
    else:
        show.emit_env(env)


@main.command("run", context_settings={"ignore_unknown_options": True})
@_select_option
@click.option(
    "--watch",
    is_flag=True,
    help="Restart the command (SIGTERM, then start it again) when a selected secret changes.",
)
@click.option(
    "--mask",
    is_flag=True,
    help=f"Replace every injected value (of {runner.MASK_MIN_LENGTH}+ characters) in the "
    "command's output with <concealed by secretmirror>.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    names: tuple[str, ...],
    prefixes: tuple[str, ...],
    watch: bool,
    mask: bool,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND with the selected secrets in its environment: run --name db -- CMD ARGS.

    The values go only into COMMAND's environment, never onto a command line or
    into a file. Without --watch or --mask, COMMAND replaces this process (exec):
    its signals and exit code are its own. With them, this process stays as a
    parent that forwards signals and exits with COMMAND's code.
    """
    api = _api()
    position = api.get("/api/v1/events")["last_seq"] if watch else None
    secrets = _selected(api, names, prefixes)
    env = _environment(secrets)
    argv = list(command)
    if not watch and not mask:
        try:
            runner.exec_command(argv, env)
        except OSError as exc:
            _command_failed(argv[0], exc)
    supervisor = runner.Supervisor(argv, mask)
    ids = {s["id"] for s in secrets}

    def refresh() -> dict[str, str] | None:
        try:
            fresh = _selected(api, names, prefixes)
            new_env = runner.environment(fresh)
        except (ClientError, CliError, runner.SelectionError) as exc:
            click.echo(f"secretmirror: not restarting: {exc}", err=True)
            return None
        ids.clear()
        ids.update(s["id"] for s in fresh)
        return new_env

    if watch:
        assert position is not None
        watcher = threading.Thread(
            target=_watch,
            args=(api, position, names, prefixes, ids, supervisor.restart),
            daemon=True,
        )
        watcher.start()
    try:
        code = supervisor.run(env, refresh)
    except OSError as exc:
        _command_failed(argv[0], exc)
    sys.exit(code)


def _command_failed(program: str, exc: OSError) -> NoReturn:
    """Exit 127 when COMMAND is not found, 126 when it cannot run, as a shell does."""
    click.echo(f"error: cannot run {program}: {exc.strerror or exc}", err=True)
    sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)


def _watch(
    api: Client,
    position: int,
    names: tuple[str, ...],
    prefixes: tuple[str, ...],
    ids: set[str],
    restart: threading.Event,
) -> None:
    """Long-poll the change feed; set ``restart`` when a selected secret changed."""
    prefix = prefixes[0] if len(prefixes) == 1 and not names else None
    while True:
        try:
            page = api.request(
                "GET",
                "/api/v1/events",
                params={"after": position, "wait": 30, "name_prefix": prefix},
                timeout_s=45,
            )
        except ClientError as exc:
            click.echo(f"secretmirror: watching for changes: {exc}; retrying", err=True)
            time.sleep(2)
            continue
        position = page["last_seq"]
        if any(
            e["secret_id"] in ids or e["name"] in names or (e["name"] or "").startswith(prefixes)
            for e in page["events"]
        ):
            restart.set()


# -- jobs: backup, restore, reconcile -----------------------------------------

_no_wait_option = click.option(
    "--no-wait", is_flag=True, help="Start the job and print it; do not wait for the end."
)


def _run_job(mode: str, output: str, no_wait: bool, **options: Any) -> None:
    """POST the job, then (unless --no-wait) follow it to the end; exit 3 on failures."""
    api = _api()
    job = api.request("POST", "/admin/v1/reconcile", body={"mode": mode, **options})
    _finish_job(api, job, output, no_wait)


def _finish_job(api: Client, job: dict[str, Any], output: str, no_wait: bool) -> None:
    """Follow a started job to the end (unless --no-wait), show it, exit 3 on failures."""
    if not no_wait:
        job = _follow(api, job, progress=output == "table" and sys.stderr.isatty())
    if output == "json":
        show.emit_json(job)
    else:
        show.job(job)
    if job["status"] == "failed" and job["counts"].get("failed"):
        sys.exit(EXIT_JOB_FAILED)
    if job["status"] in ("failed", "cancelled"):
        sys.exit(EXIT_ERROR)
    if show.drift_left(job):
        sys.exit(EXIT_FOUND_PROBLEM)


def _follow(api: Client, job: dict[str, Any], *, progress: bool) -> dict[str, Any]:
    path = f"/admin/v1/jobs/{job['id']}"
    with show.job_progress(enabled=progress) as update:
        while job["status"] in ("queued", "running"):
            time.sleep(0.2)
            job = api.get(path)
            update(job)
    return job


@main.command()
@click.option(
    "--delete-secrets",
    is_flag=True,
    help="Remove each secret from the primary once it is confirmed in the backup.",
)
@_no_wait_option
@output_option()
def backup(delete_secrets: bool, no_wait: bool, output: str) -> None:
    """Copy every secret the backup lacks or holds stale from the primary (admin)."""
    _run_job("backup", output, no_wait, delete_secrets=delete_secrets)


@main.command()
@click.option(
    "--delete-secrets",
    is_flag=True,
    help="Remove each secret from the backup once it is confirmed in the primary.",
)
@_no_wait_option
@output_option()
def restore(delete_secrets: bool, no_wait: bool, output: str) -> None:
    """Copy every secret the primary lacks or holds stale from the backup (admin)."""
    _run_job("restore", output, no_wait, delete_secrets=delete_secrets)


@main.command()
@click.option("--repair", is_flag=True, help="Fix what verify finds.")
@click.option("--dry-run", is_flag=True, help="With --repair: report, change nothing.")
@click.option(
    "--store",
    "stores",
    metavar="NAME",
    multiple=True,
    help="Only this store: primary, backup or a mirror's name (repeatable; default: all).",
)
@_no_wait_option
@output_option()
def reconcile(
    repair: bool, dry_run: bool, stores: tuple[str, ...], no_wait: bool, output: str
) -> None:
    """Verify that every store (primary, backup, mirrors) holds what it should; --repair
    fixes drift (admin).

    Exits 4 when drift is left: found by a verify or a dry run, or not repaired.
    """
    if dry_run and not repair:
        raise click.UsageError("--dry-run goes with --repair")
    options: dict[str, Any] = {"dry_run": dry_run}
    if stores:
        options["stores"] = list(dict.fromkeys(stores))
    _run_job("repair" if repair else "verify", output, no_wait, **options)


# -- operations ---------------------------------------------------------------


@main.command()
@output_option()
def status(output: str) -> None:
    """Stores, replication backlog and the last verify (admin); exit 4 on a problem."""
    body = _api().get("/admin/v1/status")
    if output == "json":
        show.emit_json(body)
    else:
        show.status(body)
    if show.status_problems(body):
        sys.exit(EXIT_FOUND_PROBLEM)


@main.group("jobs")
def jobs_group() -> None:
    """Reconcile jobs: backup, restore, verify, repair (admin)."""


@jobs_group.command("list")
@output_option()
def jobs_list(output: str) -> None:
    """The most recent jobs, newest first."""
    items = _api().get("/admin/v1/jobs")["items"]
    if output == "json":
        show.emit_json(items)
    else:
        show.jobs(items)


@jobs_group.command("show")
@click.argument("job_id", metavar="ID")
@output_option()
def jobs_show(job_id: str, output: str) -> None:
    """One job: counts, what it found and left per store, the secrets by name."""
    body = _api().get(f"/admin/v1/jobs/{urllib.parse.quote(job_id, safe='')}")
    if output == "json":
        show.emit_json(body)
    else:
        show.job(body)


@jobs_group.command("cancel")
@click.argument("job_id", metavar="ID")
@output_option()
def jobs_cancel(job_id: str, output: str) -> None:
    """Ask a queued or running job to stop."""
    body = _api().request("POST", f"/admin/v1/jobs/{urllib.parse.quote(job_id, safe='')}/cancel")
    if output == "json":
        show.emit_json(body)
    else:
        click.echo(f"job {body['id']} ({body['mode']}): {body['status']}")


@main.group("dead-letters")
def dead_letters() -> None:
    """Deliveries that ran out of attempts."""


@dead_letters.command("list")
@output_option()
def dead_letters_list(output: str) -> None:
    """The dead-lettered deliveries: store, secret, version, attempts, last error (admin)."""
    items = _api().get("/admin/v1/dead-letters")["items"]
    if output == "json":
        show.emit_json(items)
    else:
        show.dead_letters(items)


@dead_letters.command("retry")
@output_option()
def dead_letters_retry(output: str) -> None:
    """Queue every dead-lettered delivery again (admin)."""
    body = _api().request("POST", "/admin/v1/dead-letters/retry")
    if output == "json":
        show.emit_json(body)
    else:
        click.echo(f"requeued {body['requeued']} dead-lettered deliveries")


# -- keys ---------------------------------------------------------------------


@main.group()
def keys() -> None:
    """Encryption keys: what each one holds, and re-encrypting under the first (admin)."""


@keys.command("status")
@output_option()
def keys_status(output: str) -> None:
    """Ciphertexts per configured key (position 0 encrypts) and under unknown keys."""
    body = _api().get("/admin/v1/keys")
    if output == "json":
        show.emit_json(body)
    else:
        show.key_inventory(body)


@keys.command("rotate")
@_no_wait_option
@output_option()
def keys_rotate(no_wait: bool, output: str) -> None:
    """Re-encrypt every stored ciphertext under the first configured key (a rekey job).

    Afterwards `keys status` shows 0 for every other key, and they can be removed
    from the configuration.
    """
    api = _api()
    job = api.request("POST", "/admin/v1/keys/rotate")
    _finish_job(api, job, output, no_wait)


# -- users and tokens ---------------------------------------------------------


@main.group()
def user() -> None:
    """Users (admin)."""


@user.command("create")
@click.argument("name")
@click.option(
    "--role", required=True, type=click.Choice(["admin", "writer", "reader"]), help="Its role."
)
@output_option()
def user_create(name: str, role: str, output: str) -> None:
    """Create the user NAME."""
    body = _api().request("POST", "/api/v1/users", body={"name": name, "role": role})
    if output == "json":
        show.emit_json(body)
    else:
        click.echo(f"created user {body['name']} ({body['role']})")


@user.command("list")
@output_option()
def user_list(output: str) -> None:
    """List the users."""
    items = _api().get("/api/v1/users")["items"]
    if output == "json":
        show.emit_json(items)
    else:
        show.users(items)


def _user_id(api: Client, name: str) -> str:
    for found in api.get("/api/v1/users")["items"]:
        if found["name"] == name:
            return str(found["id"])
    raise ClientError(f"no user named {name!r}", 404, "not_found")


@user.command("update")
@click.argument("name")
@click.option(
    "--role", default=None, type=click.Choice(["admin", "writer", "reader"]), help="A new role."
)
@click.option(
    "--disable/--enable",
    "disabled",
    default=None,
    help="Disable the user (its tokens stop working at once) or enable it again.",
)
@output_option()
def user_update(name: str, role: str | None, disabled: bool | None, output: str) -> None:
    """Change the role of the user NAME, or disable or enable it."""
    body: dict[str, Any] = {}
    if role is not None:
        body["role"] = role
    if disabled is not None:
        body["disabled"] = disabled
    if not body:
        raise click.UsageError("give --role, --disable or --enable")
    api = _api()
    changed = api.request("PATCH", f"/api/v1/users/{_user_id(api, name)}", body=body)
    if output == "json":
        show.emit_json(changed)
    else:
        state = "disabled" if changed["disabled"] else "enabled"
        click.echo(f"updated user {changed['name']} ({changed['role']}, {state})")


@user.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def user_delete(name: str, yes: bool) -> None:
    """Delete the user NAME and its tokens (its shared secrets pass to admin)."""
    if not yes:
        if not _interactive():
            raise click.UsageError("not asking on a non-interactive stdin: pass -y to delete")
        click.confirm(f"Delete user {name!r} and its tokens?", abort=True)
    api = _api()
    api.request("DELETE", f"/api/v1/users/{_user_id(api, name)}")
    click.echo(f"deleted user {name}")


def parse_scope(text: str) -> dict[str, Any]:
    """``read:app-*`` or ``read,list:app-*`` as one scope of the tokens API."""
    actions, sep, glob = text.partition(":")
    if not sep or not glob or not actions:
        raise ValueError(f"{text!r} is not ACTIONS:GLOB, like read:app-* or read,list:ci-*")
    wanted = [a.strip() for a in actions.split(",")]
    unknown = [a for a in wanted if a not in ("read", "list", "write")]
    if unknown:
        raise ValueError(f"unknown action {unknown[0]!r}: use read, list or write")
    return {"names": [glob], "actions": wanted}


def _scopes(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    if not value:
        return None
    try:
        return [parse_scope(text) for text in value]
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


@main.group()
def token() -> None:
    """API tokens: yours, or anyone's as an admin."""


@token.command("create")
@click.option("--user", "user_name", default=None, help="Owner (admin only; default: you).")
@click.option("--name", required=True, help="A name to recognise the token by.")
@click.option(
    "--expires-in",
    default=None,
    callback=_duration,
    metavar="DURATION",
    help="Lifetime such as 30d, 12h, 15m or 90s (default: never expires).",
)
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    callback=_scopes,
    metavar="ACTIONS:GLOB",
    help="Limit the token to secret names matching GLOB (* and ?) for ACTIONS "
    "(read, list, write; comma-separated), e.g. read:app-*. Repeatable. "
    "Default: everything the user's role allows.",
)
@output_option()
def token_create(
    user_name: str | None,
    name: str,
    expires_in: int | None,
    scopes: list[dict[str, Any]] | None,
    output: str,
) -> None:
    """Create a token; it is printed once and cannot be shown again."""
    body: dict[str, Any] = {"name": name}
    if user_name is not None:
        body["user"] = user_name
    if expires_in is not None:
        body["expires_in_s"] = expires_in
    if scopes is not None:
        body["scopes"] = scopes
    created = _api().request("POST", "/api/v1/tokens", body=body)
    if output == "json":
        show.emit_json(created)
        return
    # The token alone on stdout, so `TOKEN=$(secretmirror token create ...)` works.
    click.echo(created["token"])
    expires = show.when(created["expires"]) if created.get("expires") else "never"
    click.echo(
        f"created token {created['name']} ({created['id']}) for {created['user']}, "
        f"expires {expires}; it is shown only this once",
        err=True,
    )


@token.command("list")
@output_option()
def token_list(output: str) -> None:
    """List tokens (never the token strings)."""
    items = _api().get("/api/v1/tokens")["items"]
    if output == "json":
        show.emit_json(items)
    else:
        show.tokens(items)


@token.command("revoke")
@click.argument("token_ref", metavar="ID|NAME")
def token_revoke(token_ref: str) -> None:
    """Revoke a token by its id or its name (a name several tokens share is refused)."""
    api = _api()
    token_id = token_ref
    if not _looks_like_uuid(token_ref):
        found = [t for t in api.get("/api/v1/tokens")["items"] if t["name"] == token_ref]
        if not found:
            raise CliError(f"no token named {token_ref!r}")
        if len(found) > 1:
            ids = ", ".join(f"{t['id']} ({t['user']})" for t in found)
            raise CliError(f"{len(found)} tokens are named {token_ref!r}: {ids}; give the id")
        token_id = found[0]["id"]
    api.request("DELETE", f"/api/v1/tokens/{urllib.parse.quote(token_id, safe='')}")
    click.echo(f"revoked token {token_ref}" + (f" ({token_id})" if token_id != token_ref else ""))


def _looks_like_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


# -- audit ----------------------------------------------------------------------------


def _since(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A duration back from now (``1h``, ``7d``) or an ISO 8601 time, as an ISO time."""
    if value is None:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError:
        try:
            return datetime.fromisoformat(value).isoformat()
        except ValueError:
            raise click.BadParameter(
                "give a duration such as 1h or 7d, or a time such as 2026-01-31T12:00:00Z",
                ctx,
                param,
            ) from None
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat()


@main.command("audit")
@click.option(
    "--actor",
    default=None,
    help="Only this user's records (also through tokens others made for it).",
)
@click.option(
    "--secret",
    "secret",
    default=None,
    metavar="NAME|ID",
    help="Only records of this secret (a name, or an id).",
)
@click.option("--action", default=None, help="Only this action, e.g. secret.read, auth.failed.")
@click.option(
    "--outcome",
    default=None,
    type=click.Choice(["ok", "denied", "not_found", "error"]),
    help="Only this outcome.",
)
@click.option(
    "--since",
    default=None,
    callback=_since,
    metavar="DURATION|TIME",
    help="Only records since then: 1h, 7d or an ISO 8601 time.",
)
@click.option(
    "--until",
    default=None,
    callback=_since,
    metavar="DURATION|TIME",
    help="Only records before then (a duration counts back from now).",
)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="At most this many records, newest first.",
)
@output_option()
def audit_log(
    actor: str | None,
    secret: str | None,
    action: str | None,
    outcome: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    output: str,
) -> None:
    """Who read or changed what, newest first (admin). Never values or tokens."""
    params: dict[str, str | int | None] = {
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "since": since,
        "until": until,
    }
    if secret is not None:
        params["secret_id" if _is_uuid(secret) else "secret_name"] = secret
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    api = _api()
    while len(items) < limit:
        page = api.get(
            "/admin/v1/audit", limit=min(1000, limit - len(items)), cursor=cursor, **params
        )
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if output == "json":
        show.emit_json(items)
    else:
        show.audit(items)


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
