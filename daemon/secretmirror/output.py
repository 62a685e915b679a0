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


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    title: str | None = None,
    max_width: int | None = None,
) -> None:
    """A table; ``max_width`` caps it (long cells wrap) on a terminal and off one."""
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        # An id is what the next command needs (`token revoke ID`): never cut it short.
        whole = column == "ID"
        grid.add_column(column, no_wrap=whole, min_width=36 if whole else None, overflow="fold")
    for row in rows:
        grid.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    # Off a terminal (a pipe, a file) rich would squeeze the table into 80 columns.
    console = Console(highlight=False)
    width = console.width if console.is_terminal else _PIPE_WIDTH
    if max_width is not None:
        width = min(width, max_width)
    Console(highlight=False, width=width).print(grid)


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
        ("NAME", "ID", "ROLE", "DISABLED", "CREATED"),
        (
            (
                u["name"],
                u["id"],
                u["role"],
                "yes" if u.get("disabled") else "no",
                when(u["created"]),
            )
            for u in items
        ),
    )


def scopes_text(scopes: list[dict[str, Any]] | None) -> str:
    """``read,list:app-* write:ci-*``; ``-`` for an unscoped token."""
    if not scopes:
        return "-"
    return " ".join(f"{','.join(s['actions'])}:{name}" for s in scopes for name in s["names"])


def tokens(items: list[dict[str, Any]]) -> None:
    table(
        ("ID", "NAME", "USER", "CREATED BY", "SCOPES", "CREATED", "EXPIRES"),
        (
            (
                t["id"],
                t["name"],
                t["user"],
                t.get("created_by") or "-",
                scopes_text(t.get("scopes")),
                when(t["created"]),
                when(t["expires"]) if t.get("expires") else "never",
            )
            for t in items
        ),
    )


#: ``status`` fits this many columns, on a terminal or off one.
STATUS_WIDTH = 100
_DRIFT = ("missing", "stale", "mismatch", "orphan", "moved", "unreadable")


def status(body: dict[str, Any]) -> None:
    """Stores, replication and what the last verify found, in 100 columns."""
    click.echo(f"deployment {body.get('deployment_id', '-')}")
    table(
        ("STORE", "TYPE", "UP", "LOCATION", "LAST ERROR"),
        (
            (
                role,
                s.get("type"),
                "yes" if s.get("up") else "NO",
                s.get("location"),
                s.get("last_error"),
            )
            for role, s in body.get("stores", {}).items()
        ),
        title="Stores",
        max_width=STATUS_WIDTH,
    )
    mirrors = {
        name: s["mirror"]
        for name, s in body.get("stores", {}).items()
        if isinstance(s.get("mirror"), dict)
    }
    if mirrors:
        table(
            ("MIRROR", "INCLUDE", "EXCLUDE", "PRIVATE", "NAMING", "ON DELETE"),
            (
                (
                    name,
                    " ".join(m.get("include") or []) or "-",
                    " ".join(m.get("exclude") or []) or "-",
                    "yes" if m.get("include_private") else "no",
                    f"by {m.get('naming')}",
                    m.get("on_delete"),
                )
                for name, m in mirrors.items()
            ),
            title="Mirrors",
            max_width=STATUS_WIDTH,
        )
    replication = body.get("replication", {})
    if replication:
        table(
            ("TARGET", "PENDING", "DEAD", "DEAD REASONS", "OLDEST PENDING", "APPLIED"),
            (
                (
                    target,
                    r.get("pending"),
                    r.get("dead"),
                    dead_reasons_text(r.get("dead_reasons")),
                    f"{float(r.get('oldest_pending_age_s') or 0):.1f}s",
                    r.get("applied"),
                )
                for target, r in replication.items()
            ),
            title="Replication",
            max_width=STATUS_WIDTH,
        )
    for line in status_problems(body):
        click.echo(f"problem: {line}")
    click.echo(f"last verify: {last_verify_summary(body.get('last_verify'))}")


def status_problems(body: dict[str, Any]) -> list[str]:
    """What needs a person: stores down and dead letters (``status`` then exits 4)."""
    problems = [
        f"store {role} is down: {s.get('last_error') or 'no answer'}"
        for role, s in body.get("stores", {}).items()
        if not s.get("up")
    ]
    for target, r in body.get("replication", {}).items():
        if not r.get("dead"):
            continue
        reasons = r.get("dead_reasons") or {}
        problems.append(
            f"{r['dead']} dead-lettered deliveries to {target}"
            + (f": {dead_reasons_text(reasons)}" if reasons else "")
            + " (see `dead-letters list`, then `dead-letters retry`)"
        )
        if reasons.get("foreign_entry"):
            problems.append(
                f"{reasons['foreign_entry']} entries in {target} are not this deployment's "
                "(foreign_entry): they are left alone; remove or rename them there, or "
                "exclude those secrets from the mirror, then `dead-letters retry`"
            )
    return problems


def dead_reasons_text(reasons: Any) -> str:
    """``{"foreign_entry": 1, "rejected": 2}`` as ``foreign_entry 1, rejected 2``."""
    if not isinstance(reasons, dict) or not reasons:
        return "-"
    return ", ".join(f"{reason} {count}" for reason, count in sorted(reasons.items()))


def last_verify_summary(last: Any) -> str:
    """One line: when, and what it found per store (drift classes only, or "in sync")."""
    if not last:
        return "never"
    if not isinstance(last, dict):
        return str(last)
    head = f"{when(last.get('finished'))} ({last.get('mode', 'verify')}, {last.get('status')})"
    stores = last.get("stores") or {}
    if not stores:
        return head
    parts = []
    for store, per in stores.items():
        found = [f"{per[c]} {c}" for c in _DRIFT if per.get(c)]
        parts.append(
            f"{store} " + (", ".join(found) if found else f"in sync ({per.get('in_sync', 0)})")
        )
    return f"{head}: " + "; ".join(parts)


# -- reconcile jobs -------------------------------------------------------------


def jobs(items: list[dict[str, Any]]) -> None:
    table(
        ("ID", "MODE", "STATUS", "CREATED", "FINISHED", "SCANNED", "COPIED", "FAILED"),
        (
            (
                j["id"],
                j["mode"] + (" (dry run)" if j.get("dry_run") else ""),
                j["status"],
                when(j.get("created")),
                when(j.get("finished")),
                (j.get("counts") or {}).get("scanned", 0),
                (j.get("counts") or {}).get("copied", 0),
                (j.get("counts") or {}).get("failed", 0),
            )
            for j in items
        ),
    )


def dead_letters(items: list[dict[str, Any]]) -> None:
    table(
        ("TARGET", "SECRET", "VERSION", "ATTEMPTS", "LAST ERROR"),
        (
            (
                d["target"],
                d.get("name") or d["secret_id"],
                d["version"],
                d["attempts"],
                d["last_error"],
            )
            for d in items
        ),
        max_width=STATUS_WIDTH,
    )


def drift_left(body: dict[str, Any]) -> int:
    """Drifted entries a finished verify or repair leaves behind (``reconcile`` exits 4)."""
    if body.get("mode") not in ("verify", "repair") or body.get("status") != "succeeded":
        return 0
    stores = (body.get("counts") or {}).get("stores") or {}
    found = int(sum(per.get(c, 0) for per in stores.values() for c in _DRIFT))
    if body["mode"] == "verify" or body.get("dry_run"):
        return found
    return min(found, int((body.get("counts") or {}).get("failed", 0)))


def job(body: dict[str, Any]) -> None:
    """A job: its state, the counts, per store what it found and what is left, the names."""
    counts = body.get("counts") or {}
    click.echo(
        f"job {body['id']} ({body['mode']}{', dry run' if body.get('dry_run') else ''}): "
        f"{body['status']}"
    )
    keys: tuple[str, ...] = ("total", "scanned", "copied", "skipped", "deleted", "failed")
    if body["mode"] == "rekey":
        keys = ("total", "scanned", "rekeyed", "skipped", "failed", "unknown")
    table([k.upper() for k in keys], [[counts.get(k, 0) for k in keys]], title="Counts")
    stores = counts.get("stores") or {}
    if stores:
        table(
            ("STORE", "CLASS", "FOUND", "AFTER"),
            _found_and_after(body, stores),
            title="Stores: found before the job, and left after it",
        )
    names = body.get("sample_names") or {}
    for store, per in names.items():
        for cls, listed in per.items():
            if listed:
                click.echo(f"{store} {cls}: {', '.join(listed)}")
    failures = body.get("failures") or []
    if failures:
        table(
            ("SECRET ID", "STORE", "REASON"),
            ((f["secret_id"], f["store"], f["reason"]) for f in failures[:20]),
            title=f"Failures ({len(failures)}{' shown: 20' if len(failures) > 20 else ''})",
        )
    if body.get("error"):
        click.echo(f"error: {body['error']}")


def _found_and_after(body: dict[str, Any], stores: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows per store and class. A verify (or dry run) changes nothing: after = found. A
    repair leaves at most its failures for that store."""
    changes = body["mode"] == "repair" and not body.get("dry_run")
    failed: dict[str, int] = {}
    for failure in body.get("failures") or []:
        failed[failure["store"]] = failed.get(failure["store"], 0) + 1
    rows: list[tuple[Any, ...]] = []
    for store, per in stores.items():
        drift = sum(per.get(c, 0) for c in _DRIFT)
        left = min(drift, failed.get(store, 0)) if changes else drift
        in_sync = per.get("in_sync", 0)
        rows.append((store, "in_sync", in_sync, in_sync + drift - left if changes else in_sync))
        for cls in _DRIFT:
            if per.get(cls):
                after = per[cls] if not changes else (f"<={left}" if left else 0)
                rows.append((store, cls, per[cls], after))
    return rows


def key_inventory(body: dict[str, Any]) -> None:
    """``keys status``: the configured keys in order, then any unknown key (a problem)."""

    def where(entry: dict[str, Any]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(entry.get("stored_in", {}).items()))

    table(
        ("KEY ID", "POSITION", "CIPHERTEXTS", "STORED IN"),
        (
            (
                k["id"],
                f"{k['position']} (encrypts)" if k["position"] == 0 else k["position"],
                k["ciphertexts"],
                where(k),
            )
            for k in body["keys"]
        ),
        title="Configured keys",
    )
    if body["unknown"]:
        table(
            ("KEY ID", "CIPHERTEXTS", "STORED IN"),
            ((k["id"], k["ciphertexts"], where(k)) for k in body["unknown"]),
            title="Unknown keys (not configured: these ciphertexts cannot be read)",
        )


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


def audit(items: list[dict[str, Any]]) -> None:
    table(
        ("AT", "ACTOR", "ACTION", "SECRET", "OUTCOME", "STATUS", "FROM"),
        (
            (
                when(r["at"]),
                r["actor"] or "-",
                r["action"],
                r["secret_name"] or r["secret_id"] or "-",
                r["outcome"],
                r["status"],
                r["remote_addr"] or "-",
            )
            for r in items
        ),
    )
