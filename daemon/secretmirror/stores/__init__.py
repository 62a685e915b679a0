"""Store back-ends and the factory that builds one from its settings."""

from __future__ import annotations

import importlib
from typing import Any

from secretmirror.errors import ConfigError
from secretmirror.settings import (
    CustomStoreSettings,
    FileStoreSettings,
    HashicorpStoreSettings,
    SqlStoreSettings,
)
from secretmirror.stores.base import SecretStore, StoreContext


def build_store(settings: Any, ctx: StoreContext, main_dsn: str) -> SecretStore:
    """The back-end for ``settings`` (one of the ``*StoreSettings`` classes)."""
    if isinstance(settings, SqlStoreSettings):
        from secretmirror.stores.sql import SqlStore

        return SqlStore(settings, ctx, main_dsn)
    if isinstance(settings, FileStoreSettings):
        from secretmirror.stores.file import FileStore

        return FileStore(settings, ctx)
    if isinstance(settings, HashicorpStoreSettings):
        from secretmirror.stores.hashicorp import HashicorpStore

        return HashicorpStore(settings, ctx)
    if isinstance(settings, CustomStoreSettings):
        return _load_custom(settings, ctx)
    raise ConfigError(f"store type {settings.type!r} is not available in this build")


def _load_custom(settings: CustomStoreSettings, ctx: StoreContext) -> SecretStore:
    module_name, sep, class_name = settings.class_path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError("custom store: class_path must look like package.module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise ConfigError(f"custom store: cannot import {settings.class_path}") from None
    store = cls(settings.options, ctx)
    if not isinstance(store, SecretStore):
        raise ConfigError(
            f"custom store: {settings.class_path} does not implement the SecretStore interface"
        )
    return store
