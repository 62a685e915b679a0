"""What each provider holds under a prefix, read with the provider's own API.

A test checks a mirror (or a backup) against these readings rather than
against the store's own ``list``/``get``, so a store that misreads its own
format cannot vouch for itself. Each reader returns ``{key: Held}``: the key
is the provider name less the prefix (the secret id or name the entry is
keyed by), and only this deployment's entries are listed; another
deployment's or a hand-made entry is in ``foreign`` of the reading.

- aws: ``ListSecrets`` (planned deletions included) filtered to the prefix,
  the ownership tags, the ``AWSCURRENT`` VersionId (``sm1-<version>-<hash>``)
  and ``GetSecretValue``.
- hashicorp: KV v2 ``LIST metadata/<prefix>``, each entry's custom metadata
  and ``GET data/<name>?version=<secretmirror.kv-version>``.
- gcp: the official SDK (REST transport) against the endpoint: secrets under
  the prefix, their labels and an access of the labelled version.
- file: secretmirror's ``FileStore.list``/``get`` with the deployment id and
  key (the file format is secretmirror's own; there is no other API).
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from secretmirror.crypto import Keyring
from secretmirror.settings import FileStoreSettings
from secretmirror.stores.base import StoreContext
from secretmirror.stores.file import FileStore
from tests.moto import secrets_client
from tests.openbao import OpenBao


@dataclass(frozen=True)
class Held:
    """One entry of this deployment: its secretmirror version and values (None: a tombstone)."""

    version: int
    values: dict[str, str] | None


@dataclass
class Reading:
    """A provider's entries under a prefix: this deployment's, and the keys of anyone else's."""

    entries: dict[str, Held] = field(default_factory=dict)
    foreign: set[str] = field(default_factory=set)
    #: Entries of this deployment whose provider state is past what secretmirror recorded
    #: (hashicorp: a KV version written after the recorded ``kv-version``, never recorded).
    #: ``entries`` holds what the recorded version holds, as the store serves it.
    unrecorded: set[str] = field(default_factory=set)

    def live(self) -> dict[str, dict[str, str]]:
        """Key -> values of the entries that are not tombstones."""
        return {k: h.values for k, h in self.entries.items() if h.values is not None}


# -- aws -------------------------------------------------------------------------


def _aws_version(version_id: str | None) -> int | None:
    parts = (version_id or "").split("-")
    if len(parts) == 3 and parts[0] == "sm1" and parts[1].isdigit():
        return int(parts[1])
    return None


async def read_aws(endpoint: str, prefix: str, deployment: str) -> Reading:
    """The Secrets Manager entries named ``prefix...`` (moto or AWS at ``endpoint``)."""
    reading = Reading()
    async with secrets_client(endpoint) as client:
        listed: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "Filters": [{"Key": "name", "Values": [prefix]}],
            "IncludePlannedDeletion": True,
            "MaxResults": 100,
        }
        while True:
            page = await client.list_secrets(**kwargs)
            listed += page["SecretList"]
            if not page.get("NextToken"):
                break
            kwargs["NextToken"] = page["NextToken"]
        for item in listed:
            name = str(item["Name"])
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :]
            tags = {t["Key"]: t["Value"] for t in item.get("Tags") or []}
            if tags.get("secretmirror:deployment") != deployment:
                reading.foreign.add(key)
                continue
            stages = item.get("SecretVersionsToStages") or {}
            current = next((v for v, labels in stages.items() if "AWSCURRENT" in labels), None)
            version = _aws_version(current)
            newest = max((_aws_version(v) or 0 for v in stages), default=0)
            tombstone = int(tags.get("secretmirror:tombstone", "0") or 0)
            if item.get("DeletedDate") is not None or tombstone > (version or newest):
                reading.entries[key] = Held(max(tombstone, newest), None)
                continue
            if version is None:
                reading.foreign.add(key)  # AWSCURRENT written by someone else
                continue
            answer = await client.get_secret_value(SecretId=item["ARN"], VersionId=current)
            reading.entries[key] = Held(version, json.loads(answer["SecretString"]))
    return reading


# -- hashicorp -------------------------------------------------------------------


def _bao(bao: OpenBao, method: str, path: str) -> Any:
    status, body = bao.request(method, path)
    if status == 404:
        return None
    assert status == 200, (method, path, status)
    return body


def _read_vault_sync(bao: OpenBao, mount: str, prefix: str, deployment: str) -> Reading:
    reading = Reading()
    listed = _bao(bao, "LIST", f"{mount}/metadata/{prefix}")
    for key in (listed or {}).get("data", {}).get("keys", []):
        if key.endswith("/"):
            continue  # a folder: entries of this prefix are flat
        path = urllib.parse.quote(f"{prefix}{key}")
        meta = _bao(bao, "GET", f"{mount}/metadata/{path}")
        if meta is None:
            continue
        custom = meta["data"].get("custom_metadata") or {}
        if custom.get("secretmirror.deployment") != deployment:
            reading.foreign.add(key)
            continue
        version = int(custom.get("secretmirror.version", "0"))
        if custom.get("secretmirror.deleted") == "true":
            reading.entries[key] = Held(version, None)
            continue
        kv_version = custom.get("secretmirror.kv-version")
        data = _bao(bao, "GET", f"{mount}/data/{path}?version={kv_version}")
        if data is None or data["data"]["data"] is None:
            reading.foreign.add(key)  # the recorded version is gone
            continue
        if str(meta["data"]["current_version"]) != kv_version:
            reading.unrecorded.add(key)  # a half-done write or a version written by hand
        reading.entries[key] = Held(version, dict(data["data"]["data"]))
    return reading


async def read_vault(bao: OpenBao, mount: str, prefix: str, deployment: str) -> Reading:
    """The KV v2 entries under ``mount``/``prefix`` (read with the root token)."""
    return await asyncio.to_thread(_read_vault_sync, bao, mount, prefix, deployment)


# -- gcp -------------------------------------------------------------------------


def _read_gcp_sync(endpoint: str, key_file: Path, project: str, prefix: str, dep: str) -> Reading:
    from secretmirror.stores.gcp import label_value
    from tests.gcpfake import sdk_client

    client = sdk_client(endpoint, key_file)
    reading = Reading()
    ours = label_value(dep)
    for secret in client.list_secrets(request={"parent": f"projects/{project}"}):
        secret_id = secret.name.rpartition("/")[2]
        if not secret_id.startswith(prefix):
            continue
        key = secret_id[len(prefix) :]
        labels = dict(secret.labels)
        if labels.get("secretmirror_deployment") != ours:
            reading.foreign.add(key)
            continue
        version = int(labels.get("secretmirror_version", "0"))
        if labels.get("secretmirror_deleted") == "true":
            reading.entries[key] = Held(version, None)
            continue
        gcp_version = labels.get("secretmirror_gcp_version")
        answer = client.access_secret_version(name=f"{secret.name}/versions/{gcp_version}")
        reading.entries[key] = Held(version, json.loads(answer.payload.data))
    return reading


async def read_gcp(
    endpoint: str, key_file: Path, project: str, prefix: str, deployment: str
) -> Reading:
    """The Secret Manager secrets whose id starts with ``prefix`` in ``project``."""
    return await asyncio.to_thread(_read_gcp_sync, endpoint, key_file, project, prefix, deployment)


# -- file ------------------------------------------------------------------------


async def read_file_store(path: Path, deployment: str, key: bytes) -> Reading:
    """A file store's entries (``key``: the daemon's encryption key, raw bytes)."""
    store = FileStore(FileStoreSettings(path=path), StoreContext(deployment, Keyring([key])))
    reading = Reading()
    async for entry in store.list():
        if entry.foreign_write:
            reading.foreign.add(entry.secret_id)
            continue
        if entry.deleted:
            reading.entries[entry.secret_id] = Held(entry.version, None)
            continue
        got = await store.get(entry.secret_id)
        if got is None:
            reading.foreign.add(entry.secret_id)
            continue
        reading.entries[entry.secret_id] = Held(got.version, dict(got.values))
    return reading
