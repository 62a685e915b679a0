"""Store back-ends and the factory that builds one from its settings."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from secretmirror.errors import ConfigError
from secretmirror.settings import (
    AwsStoreSettings,
    AzureStoreSettings,
    CustomStoreSettings,
    FileStoreSettings,
    GcpStoreSettings,
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
    if isinstance(settings, AwsStoreSettings):
        from secretmirror.stores.aws import AwsStore

        return AwsStore(settings, ctx)
    if isinstance(settings, HashicorpStoreSettings):
        from secretmirror.stores.hashicorp import HashicorpStore

        return HashicorpStore(settings, ctx)
    if isinstance(settings, AzureStoreSettings):
        from secretmirror.stores.azure import AzureStore

        return AzureStore(settings, ctx)
    if isinstance(settings, GcpStoreSettings):
        from secretmirror.stores.gcp import GcpStore

        return GcpStore(settings, ctx)
    if isinstance(settings, CustomStoreSettings):
        return _load_custom(settings, ctx)
    raise ConfigError(f"store type {settings.type!r} is not available in this build")


#: What a custom store class must define as coroutine functions (``list`` returns
#: an async iterator, usually as an async generator).
_ASYNC_METHODS = ("open", "close", "health", "put", "get", "delete")


def _load_custom(settings: CustomStoreSettings, ctx: StoreContext) -> SecretStore:
    """Import ``class_path``, check it against the interface, build it with ``(options, ctx)``.

    Every failure is a ``ConfigError`` naming the class path, so a typo stops
    start-up with one line rather than a traceback. Option values are never
    part of a message: they may hold credentials.
    """
    path = settings.class_path
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise ConfigError(f"custom store: class_path {path!r} must look like package.module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"custom store: cannot import {path}: {exc}") from None
    except Exception as exc:
        raise ConfigError(
            f"custom store: importing {module_name} for {path} failed ({type(exc).__name__})"
        ) from None
    cls: Any = module
    for part in class_name.split("."):
        cls = getattr(cls, part, None)
    if not isinstance(cls, type):
        raise ConfigError(f"custom store: {path}: {module_name} has no class {class_name}")
    wrong = [n for n in _ASYNC_METHODS if not inspect.iscoroutinefunction(getattr(cls, n, None))]
    if not callable(getattr(cls, "list", None)):
        wrong.append("list")
    if wrong:
        raise ConfigError(
            f"custom store: {path} does not implement the SecretStore interface "
            f"(missing or not async: {', '.join(wrong)})"
        )
    try:
        store = cls(dict(settings.options), ctx)
    except ConfigError as exc:
        raise ConfigError(f"custom store {path}: {exc.message}") from None
    except Exception as exc:
        raise ConfigError(
            f"custom store: {path}(options, ctx) failed ({type(exc).__name__}); "
            "the class must accept (options: dict, ctx: StoreContext)"
        ) from None
    if not isinstance(store, SecretStore):
        raise ConfigError(
            f"custom store: {path} does not implement the SecretStore interface "
            "(it needs type, location and max_value_bytes too)"
        )
    return store
