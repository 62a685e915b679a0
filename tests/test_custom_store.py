"""The ``custom`` store type: loading a class by path, passing options, refusing bad classes."""

from __future__ import annotations

import base64
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from secretmirror.crypto import Keyring
from secretmirror.errors import ConfigError
from secretmirror.settings import CustomStoreSettings, load_settings
from secretmirror.stores import build_store
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.example_custom import SqliteStore

EXAMPLE = "secretmirror.stores.example_custom:SqliteStore"


class RecordingStore:
    """A store class that keeps what it was built with (loading is what is tested here)."""

    type = "custom"
    location = "recording:"
    max_value_bytes = None

    def __init__(self, options: dict[str, Any], ctx: StoreContext) -> None:
        self.options = options
        self.ctx = ctx

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def health(self) -> None: ...

    async def put(
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        return PutOutcome.UNCHANGED

    async def get(self, secret_id: str) -> StoredValue | None:
        return None

    async def delete(self, secret_id: str, version: int) -> None: ...

    async def list(self) -> AsyncIterator[Entry]:
        for entry in ():
            yield entry


class NotAStore:
    """Has a constructor of the right shape and nothing else."""

    def __init__(self, options: dict[str, Any], ctx: StoreContext) -> None: ...


class BlockingPut(RecordingStore):
    """``put`` is a plain function: it would block the event loop."""

    def put(  # type: ignore[override]
        self, secret_id: str, version: int, values: dict[str, str], content_hash: str
    ) -> PutOutcome:
        return PutOutcome.UNCHANGED


class NoLocation:
    """Every method, but no ``location``: only an instance can show that."""

    type = "custom"
    max_value_bytes = None
    open = RecordingStore.open
    close = RecordingStore.close
    health = RecordingStore.health
    put = RecordingStore.put
    get = RecordingStore.get
    delete = RecordingStore.delete
    list = RecordingStore.list

    def __init__(self, options: dict[str, Any], ctx: StoreContext) -> None: ...


class WrongSignature(RecordingStore):
    """A constructor that does not take ``(options, ctx)``."""

    def __init__(self) -> None:  # type: ignore[no-untyped-def]
        pass


@pytest.fixture
def ctx(tmp_path: Path) -> StoreContext:
    return StoreContext("deployment-1", Keyring([secrets.token_bytes(32)]), None, str(tmp_path))


def _build(class_path: str, ctx: StoreContext, **options: Any) -> Any:
    settings = CustomStoreSettings(class_path=class_path, options=options)
    return build_store(settings, ctx, main_dsn="postgresql://main/db")


def test_class_path_builds_the_class(ctx: StoreContext, tmp_path: Path) -> None:
    """The class named by class_path is built; its location is what it reports."""
    store = _build(EXAMPLE, ctx, path=str(tmp_path / "v.db"))
    assert isinstance(store, SqliteStore)
    assert f"sqlite:{(tmp_path / 'v.db').resolve()}" == store.location


def test_options_and_context_are_passed_through(ctx: StoreContext) -> None:
    """The options table and the store context reach the constructor unchanged."""
    options = {"endpoint": "https://x.example", "retries": 3, "nested": {"a": [1, 2]}}
    store = _build("tests.test_custom_store:RecordingStore", ctx, **options)
    assert options == store.options
    assert ctx is store.ctx


def test_options_come_from_a_toml_table(ctx: StoreContext, tmp_path: Path) -> None:
    """A configuration file's options table configures the custom store."""
    config = tmp_path / "secretmirror.toml"
    db = tmp_path / "from-toml.db"
    config.write_text(
        f'database_url = "postgresql://x/y"\n'
        f"[backup]\n"
        f'type = "custom"\n'
        f'class_path = "{EXAMPLE}"\n'
        f'options = {{ path = "{db}" }}\n'
    )
    settings = load_settings(config)
    store = build_store(settings.backup, ctx, main_dsn="postgresql://x/y")
    assert f"sqlite:{db.resolve()}" == store.location


@pytest.mark.parametrize(
    "class_path",
    ["no_such_module_xyz:Store", "secretmirror.stores.no_such_store:Store"],
)
def test_missing_module_is_a_config_error(ctx: StoreContext, class_path: str) -> None:
    """A module that cannot be imported stops start-up with the class path named."""
    with pytest.raises(ConfigError, match=f"cannot import {class_path}"):
        _build(class_path, ctx)


def test_missing_class_is_a_config_error(ctx: StoreContext) -> None:
    """A module without the named class stops start-up with the class path named."""
    with pytest.raises(ConfigError, match=r"example_custom:NoSuchStore.*has no class NoSuchStore"):
        _build("secretmirror.stores.example_custom:NoSuchStore", ctx)


def test_malformed_class_path_is_a_config_error(ctx: StoreContext) -> None:
    """A class path without ``:Class`` is refused with the expected form in the message."""
    with pytest.raises(ConfigError, match=r"must look like package\.module:Class"):
        _build("secretmirror.stores.example_custom.SqliteStore", ctx)


def test_class_without_the_interface_is_refused(ctx: StoreContext) -> None:
    """A class lacking the store methods is refused before it is built, naming what is missing."""
    with pytest.raises(ConfigError, match=r"NotAStore does not implement.*open, close, health"):
        _build("tests.test_custom_store:NotAStore", ctx)


def test_blocking_method_is_refused(ctx: StoreContext) -> None:
    """A store method that is not async is refused by name."""
    with pytest.raises(ConfigError, match=r"BlockingPut does not implement.*not async: put\)"):
        _build("tests.test_custom_store:BlockingPut", ctx)


def test_instance_without_location_is_refused(ctx: StoreContext) -> None:
    """A built store lacking ``location`` is refused with the class path named."""
    with pytest.raises(ConfigError, match="NoLocation does not implement"):
        _build("tests.test_custom_store:NoLocation", ctx)


def test_constructor_of_the_wrong_shape_is_refused(ctx: StoreContext) -> None:
    """A constructor that cannot take (options, ctx) is a config error, not a traceback."""
    with pytest.raises(ConfigError, match=r"WrongSignature\(options, ctx\) failed \(TypeError\)"):
        _build("tests.test_custom_store:WrongSignature", ctx)


def test_constructor_config_error_names_the_class(ctx: StoreContext) -> None:
    """The class's own ConfigError (a missing option) is reported with the class path."""
    with pytest.raises(ConfigError, match=f"custom store {EXAMPLE}: option path .* is required"):
        _build(EXAMPLE, ctx)


def test_option_values_are_never_echoed(ctx: StoreContext, tmp_path: Path) -> None:
    """A refused option is named, its value (maybe a credential) is not."""
    canary = "canary-" + base64.b32encode(secrets.token_bytes(10)).decode()
    with pytest.raises(ConfigError) as raised:
        _build(EXAMPLE, ctx, path=str(tmp_path / "v.db"), token=canary)
    assert "unknown option(s): token" in raised.value.message
    assert canary not in raised.value.message


async def test_the_example_lists_an_entry_that_does_not_decrypt_as_unreadable(
    ctx: StoreContext, tmp_path: Path
) -> None:
    """A ciphertext flipped on disk, or another entry's copied in, lists as unreadable (verify
    reports it, repair re-issues it), never as in sync on the strength of its row."""
    path = tmp_path / "v.db"
    store = _build(EXAMPLE, ctx, path=str(path))
    await store.open()
    try:
        for sid, value in (("a", "1"), ("b", "2"), ("c", "3")):
            await store.put(sid, 1, {"k": value}, "0" * 32)
        with sqlite3.connect(path) as db:
            blob = db.execute("SELECT ciphertext FROM entries WHERE secret_id = 'a'").fetchone()[0]
            flipped = blob[:-1] + bytes([blob[-1] ^ 1])
            db.execute("UPDATE entries SET ciphertext = ? WHERE secret_id = 'a'", (flipped,))
            db.execute(
                "UPDATE entries SET ciphertext = (SELECT ciphertext FROM entries"
                " WHERE secret_id = 'c') WHERE secret_id = 'b'"
            )
        listed = {e.secret_id: e.unreadable async for e in store.list()}
        assert listed == {"a": True, "b": True, "c": False}
    finally:
        await store.close()
