"""The ``secretmirror`` command line: the daemon and a client of its HTTP API.

Exit codes: 0 success, 1 error, 2 usage, 3 a job finished with failures.
"""

from __future__ import annotations

import asyncio
import sys

import click

from secretmirror import db
from secretmirror import logging as sm_logging
from secretmirror.errors import ConfigError, SecretMirrorError
from secretmirror.settings import load_settings


@click.group()
def main() -> None:
    """secretmirror: secrets with a mirrored backup store."""


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
        asyncio.run(daemon.serve(settings))
    except ConfigError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    except SecretMirrorError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)


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
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(1)
    click.echo(f"applied {len(applied)} migration(s)" if applied else "schema is current")
