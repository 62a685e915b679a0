"""How the CLI shows results: rich tables for people, JSON and env lines for scripts.

Cells are wrapped in ``rich.text.Text`` so a secret value or a name that looks
like rich markup (``[bold]``) is printed as it is, never interpreted.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from secretmirror.client import DEFAULT_URL
from secretmirror.settings import Settings

FORMATS = ("table", "json")
_PIPE_WIDTH = 1000


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def emit_env(values: dict[str, str]) -> None:
    """``KEY=value`` lines, shell-quoted: ``--values-file`` reads them back unchanged."""
    for key in sorted(values):
        click.echo(f"{key}={shlex.quote(values[key])}")


def emit_value(value: str) -> None:
    """One value exactly as stored; a newline after it only for a person at a terminal."""
    click.echo(value, nl=sys.stdout.isatty())


def shell_quote(value: str) -> str:
    """Single quotes always (``'it'"'"'s'``): safe for any byte a value can hold."""
    return "'" + value.replace("'", "'\"'\"'") + "'"


def env_name(key: str) -> str:
    """The environment variable a key becomes: ``.`` and ``-`` turn into ``_``."""
    return key.replace(".", "_").replace("-", "_")


def emit_shell(values: dict[str, str]) -> None:
    """``export NAME='value'`` lines for ``eval``; ValueError for a key no shell accepts."""
    lines = []
    for key in sorted(values):
        name = env_name(key)
        if not name.isidentifier() or not name.isascii():
            raise ValueError(f"key {key!r} cannot be a shell variable name")
        lines.append(f"export {name}={shell_quote(values[key])}")
    for line in lines:
        click.echo(line)


def emit_yaml(values: dict[str, str]) -> None:
    """A YAML mapping; every value a quoted string, so it reads back exactly."""
    import yaml

    click.echo(
        yaml.safe_dump(
            values, default_flow_style=False, default_style='"', allow_unicode=True, width=2**20
        ),
        nl=False,
    )


def when(stamp: str | None) -> str:
    """An ISO timestamp from the API, shortened to the second for a table."""
    if not stamp:
        return "-"
    try:
        parsed = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    if parsed.utcoffset() == timedelta(0):
        return parsed.strftime("%Y-%m-%d %H:%M:%SZ")
    return parsed.strftime("%Y-%m-%d %H:%M:%S%z")


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        # An id is what the next command needs (`token revoke ID`): never cut it short.
        whole = column == "ID"
        grid.add_column(column, no_wrap=whole, min_width=36 if whole else None)
    for row in rows:
        grid.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    # Off a terminal (a pipe, a file) rich would squeeze the table into 80 columns.
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=_PIPE_WIDTH)
    console.print(grid)


def secret(body: dict[str, Any]) -> None:
    """One secret: its metadata, then its keys and values when it has them."""
    table(
        ("NAME", "ID", "VISIBILITY", "VERSION", "UPDATED"),
        [
            (
                body["name"],
                body["id"],
                "private" if body["private"] else "shared",
                body["version"],
                when(body["updated"]),
            )
        ],
    )
    values = body.get("values")
    if values is not None:
        table(("KEY", "VALUE"), sorted(values.items()))


def secrets(items: list[dict[str, Any]]) -> None:
    table(
        ("NAME", "ID", "VISIBILITY", "VERSION", "UPDATED"),
        (
            (
                s["name"],
                s["id"],
                "private" if s["private"] else "shared",
                s["version"],
                when(s["updated"]),
            )
            for s in items
        ),
    )


def history(items: list[dict[str, Any]]) -> None:
    table(
        ("VERSION", "KIND", "ACTOR", "RECORDED"),
        ((e["version"], e["kind"], e["actor"], when(e["recorded_at"])) for e in items),
    )


def users(items: list[dict[str, Any]]) -> None:
    table(
        ("NAME", "ID", "ROLE", "CREATED"),
        ((u["name"], u["id"], u["role"], when(u["created"])) for u in items),
    )


def tokens(items: list[dict[str, Any]]) -> None:
    table(
        ("ID", "NAME", "USER", "CREATED", "EXPIRES"),
        (
            (
                t["id"],
                t["name"],
                t["user"],
                when(t["created"]),
                when(t["expires"]) if t.get("expires") else "never",
            )
            for t in items
        ),
    )


def status(body: dict[str, Any]) -> None:
    click.echo(f"deployment {body.get('deployment_id', '-')}")
    table(
        ("STORE", "TYPE", "LOCATION", "UP", "LAST ERROR"),
        (
            (
                role,
                s.get("type"),
                s.get("location"),
                "yes" if s.get("up") else "NO",
                s.get("last_error"),
            )
            for role, s in body.get("stores", {}).items()
        ),
        title="Stores",
    )
    replication = body.get("replication", {})
    if replication:
        table(
            ("TARGET", "PENDING", "DEAD", "OLDEST PENDING (S)", "APPLIED"),
            (
                (
                    target,
                    r.get("pending"),
                    r.get("dead"),
                    f"{float(r.get('oldest_pending_age_s') or 0):.1f}",
                    r.get("applied"),
                )
                for target, r in replication.items()
            ),
            title="Replication",
        )
    last_verify = body.get("last_verify")
    if last_verify is None:
        click.echo("last verify: never")
    elif isinstance(last_verify, dict):
        summary = ", ".join(
            f"{k}={v}" for k, v in last_verify.items() if not isinstance(v, dict | list)
        )
        click.echo(f"last verify: {summary}")
    else:
        click.echo(f"last verify: {last_verify}")


# -- reconcile jobs -------------------------------------------------------------

_CLASSES = ("in_sync", "missing", "stale", "mismatch", "unreadable", "orphan", "moved")


def job(body: dict[str, Any]) -> None:
    """A job's summary: its state, the counts, drift per store and the first failures."""
    counts = body.get("counts") or {}
    click.echo(
        f"job {body['id']} ({body['mode']}{', dry run' if body.get('dry_run') else ''}): "
        f"{body['status']}"
    )
    keys = ("total", "scanned", "copied", "skipped", "deleted", "failed")
    table([k.upper() for k in keys], [[counts.get(k, 0) for k in keys]], title="Counts")
    stores = counts.get("stores") or {}
    if stores:
        table(
            ("STORE", *(c.upper() for c in _CLASSES)),
            ((name, *(per.get(c, 0) for c in _CLASSES)) for name, per in stores.items()),
            title="Stores",
        )
    failures = body.get("failures") or []
    if failures:
        table(
            ("SECRET ID", "STORE", "REASON"),
            ((f["secret_id"], f["store"], f["reason"]) for f in failures[:20]),
            title=f"Failures ({len(failures)}{' shown: 20' if len(failures) > 20 else ''})",
        )
    if body.get("error"):
        click.echo(f"error: {body['error']}")


@contextlib.contextmanager
def job_progress(*, enabled: bool) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A progress bar on a terminal (scanned of total); a no-op elsewhere."""
    if not enabled:
        yield lambda _job: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(current: dict[str, Any]) -> None:
            counts = current.get("counts") or {}
            bar.update(
                task,
                description=f"{current['mode']} {current['status']}",
                completed=counts.get("scanned", 0),
                total=counts.get("total") or None,
            )

        yield update


# -- the daemon's start-up message ----------------------------------------------


def startup_banner(settings: Settings, scheme: str) -> str:
    """What ``secretmirror serve`` prints once it listens: URL, admin token, a first command.

    The token itself is never printed: only where it is.
    """
    host, port = settings.listen_host, settings.listen_port
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - compared, not bound
        host = "127.0.0.1"
    url = f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"
    cli = _cli_path()
    lines = [f"secretmirror is serving on {url}"]
    token_file = settings.data_dir / "admin-token"
    if settings.admin_token is None:
        lines.append(f"admin token: in {token_file}")
        export = f"export SECRETMIRROR_TOKEN=$(cat {_shell_path(token_file)})"
    elif os.environ.get("SECRETMIRROR_ADMIN_TOKEN"):
        lines.append("admin token: from SECRETMIRROR_ADMIN_TOKEN")
        export = 'export SECRETMIRROR_TOKEN="$SECRETMIRROR_ADMIN_TOKEN"'
    else:
        lines.append("admin token: admin_token in the configuration file")
        export = "export SECRETMIRROR_TOKEN=<admin_token from the configuration file>"
    lines.append("try:")
    if url != DEFAULT_URL:
        lines.append(f"  export SECRETMIRROR_URL={url}")
    lines += [
        f"  {export}",
        f"  {cli} secret create demo password=s3cret",
        f"  {cli} secret get demo",
    ]
    return "\n".join(lines)


def _shell_path(path: Path) -> str:
    """``path`` for a shell command line, as ``~/...`` under the home directory."""
    try:
        return "~/" + shlex.quote(str(path.resolve().relative_to(Path.home().resolve())))
    except ValueError:
        return shlex.quote(str(path))


def _cli_path() -> str:
    """How to call the CLI from here: ``.venv/bin/secretmirror`` under ``make run``."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "secretmirror":
        return "secretmirror"
    found = shutil.which("secretmirror")
    if found and Path(found).resolve() == argv0.resolve():
        return "secretmirror"
    try:
        return shlex.quote(str(argv0.resolve().relative_to(Path.cwd().resolve())))
    except ValueError:
        return shlex.quote(str(argv0.resolve()))
