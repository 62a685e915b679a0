"""The Key Vault fake is held to Microsoft's definitions, not to our reading of them.

The official ``azure-keyvault-secrets`` client, authenticated by
``azure-identity``'s real ``ClientSecretCredential`` against the fake's token
endpoint, runs scripted sequences against the fake and must succeed. Every
response it receives is also checked against the SDK's generated models
(``azure.keyvault.secrets._generated.models``, generated from the service's
TypeSpec definition): every field must be one the model defines, with the
type it declares. No Key Vault REST API specification (JSON) ships in any
installed package, so these two checks are what hold the fake.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import ssl
import types
import typing
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.core.pipeline import PipelineResponse
from azure.identity.aio import ClientSecretCredential
from azure.keyvault.secrets._generated import models
from azure.keyvault.secrets._generated._utils.model_base import Model
from azure.keyvault.secrets.aio import SecretClient

from tests.azurefake import CLIENT_ID, RESOURCE, TENANT_ID, AzureFake, sdk_client


class Recorder:
    """Every (method, path, status, body) the SDK received."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int, Any]] = []

    def __call__(self, response: PipelineResponse[Any, Any]) -> None:
        http = response.http_response
        text = http.text()
        body = json.loads(text) if text else None
        request = response.http_request
        self.seen.append((request.method, urlsplit(request.url).path, http.status_code, body))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def sdk(azure_fake: AzureFake, recorder: Recorder) -> AsyncIterator[SecretClient]:
    """The official async SecretClient on the real ClientSecretCredential, both on the fake."""
    async with sdk_client(azure_fake, raw_response_hook=recorder, retry_total=0) as client:
        yield client


# -- the scripted sequence ------------------------------------------------------------------


async def test_sdk_scripted_sequence_succeeds(sdk: SecretClient, azure_prefix: str) -> None:
    """Create, add a version, get, list filtered by tag, delete and recover all succeed."""
    name = f"{azure_prefix}seq"
    created = await sdk.set_secret(
        name, '{"a":"1"}', content_type="application/json", tags={"owner": "us", "v": "1"}
    )
    added = await sdk.set_secret(name, '{"a":"2"}', tags={"owner": "us", "v": "2"})
    assert created.properties.version != added.properties.version
    latest = await sdk.get_secret(name)
    first = await sdk.get_secret(name, created.properties.version)
    assert (latest.value, first.value) == ('{"a":"2"}', '{"a":"1"}')
    assert latest.properties.tags == {"owner": "us", "v": "2"}
    await sdk.set_secret(f"{azure_prefix}other", "x", tags={"owner": "them"})
    ours = [
        p.name
        async for p in sdk.list_properties_of_secrets()
        if (p.name or "").startswith(azure_prefix) and (p.tags or {}).get("owner") == "us"
    ]
    assert ours == [name]
    deleted = await sdk.delete_secret(name)
    assert deleted.recovery_id is not None
    assert deleted.deleted_date is not None
    recovered = await sdk.recover_deleted_secret(name)
    assert recovered.name == name
    assert (await sdk.get_secret(name)).value == '{"a":"2"}'


async def test_every_response_matches_the_sdk_models(
    sdk: SecretClient, recorder: Recorder, azure_prefix: str
) -> None:
    """Each body the SDK receives uses only fields of the SDK's models, with their types."""
    name = f"{azure_prefix}shape"
    created = await sdk.set_secret(name, "v1", content_type="text/plain", tags={"k": "v"})
    await sdk.set_secret(name, "v2")
    await sdk.get_secret(name, created.properties.version)
    await sdk.update_secret_properties(name, created.properties.version, tags={"k": "w"})
    _ = [p async for p in sdk.list_properties_of_secret_versions(name)]
    _ = [p async for p in sdk.list_properties_of_secrets(max_page_size=2)]
    await sdk.delete_secret(name)
    await sdk.get_deleted_secret(name)
    _ = [d async for d in sdk.list_deleted_secrets()]
    await sdk.recover_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        await sdk.get_secret(f"{azure_prefix}missing")
    kinds = {_kind(method, path, status) for method, path, status, _ in recorder.seen}
    assert {"bundle", "deleted_bundle", "page", "deleted_page", "error"} <= kinds
    problems = [
        problem
        for method, path, status, body in recorder.seen
        for problem in _conformance(method, path, status, body)
    ]
    assert problems == []


async def test_listing_pages_through_next_link(sdk: SecretClient, azure_prefix: str) -> None:
    """More secrets than a page holds come back whole, page by page."""
    names = {f"{azure_prefix}p{i:02d}" for i in range(30)}
    for name in names:
        await sdk.set_secret(name, "x")
    pages = sdk.list_properties_of_secrets(max_page_size=7).by_page()
    seen: list[str] = []
    page_count = 0
    async for page in pages:
        page_count += 1
        seen += [p.name or "" async for p in page]
    assert names <= set(seen)
    assert len(seen) == len(set(seen))
    assert page_count > 4


async def test_set_on_a_soft_deleted_name_is_a_conflict(
    sdk: SecretClient, azure_prefix: str
) -> None:
    """Setting a soft-deleted name answers 409 ObjectIsDeletedButRecoverable, as Key Vault does."""
    name = f"{azure_prefix}gone"
    await sdk.set_secret(name, "x")
    await sdk.delete_secret(name)
    with pytest.raises(ResourceExistsError) as refused:
        await sdk.set_secret(name, "y")
    assert refused.value.status_code == 409
    assert refused.value.error is not None
    assert refused.value.error.code == "Conflict"
    assert "ObjectIsDeletedButRecoverable" in str(refused.value)


async def test_purge_frees_the_name(sdk: SecretClient, azure_prefix: str) -> None:
    """A purged secret is gone from the deleted list and its name can be set again."""
    name = f"{azure_prefix}purged"
    await sdk.set_secret(name, "x")
    await sdk.delete_secret(name)
    await sdk.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError):
        await sdk.get_deleted_secret(name)
    assert (await sdk.set_secret(name, "again")).value == "again"


async def test_sdk_sees_injected_throttling(
    sdk: SecretClient, azure_fake: AzureFake, azure_prefix: str
) -> None:
    """An injected burst answers 429 with Retry-After, which the SDK reports as such."""
    await sdk.set_secret(f"{azure_prefix}t", "x")  # authenticated before the burst
    azure_fake.throttle(1, retry_after_s=3)
    with pytest.raises(HttpResponseError) as throttled:
        await sdk.get_secret(f"{azure_prefix}t")
    assert throttled.value.status_code == 429
    assert throttled.value.response is not None
    assert throttled.value.response.headers["Retry-After"] == "3"


async def test_wrong_client_secret_gets_no_token(azure_fake: AzureFake) -> None:
    """ClientSecretCredential with a wrong secret is refused by the fake's token endpoint."""
    credential = ClientSecretCredential(
        TENANT_ID,
        CLIENT_ID,
        "not-the-secret",
        authority=azure_fake.url,
        connection_verify=str(azure_fake.ca_file),
    )
    async with credential:
        with pytest.raises(ClientAuthenticationError):
            await credential.get_token(f"{RESOURCE}/.default", tenant_id=TENANT_ID)


def test_unauthenticated_request_gets_the_challenge(azure_fake: AzureFake) -> None:
    """A request without a token is answered 401 with Key Vault's Bearer challenge."""
    context = ssl.create_default_context(cafile=str(azure_fake.ca_file))
    request = urllib.request.Request(f"{azure_fake.url}/secrets?api-version=7.5")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{azure_fake.url}/{TENANT_ID}", resource="{RESOURCE}"'
    )


def test_plain_http_is_not_served(azure_fake: AzureFake) -> None:
    """The fake speaks only TLS, like Key Vault."""
    plain = azure_fake.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"{plain}/secrets?api-version=7.5", timeout=10)


# -- checking bodies against the SDK's generated models -----------------------------------------

_PAGE_FIELDS = {"value", "nextLink"}


def _kind(method: str, path: str, status: int) -> str:
    if status == 401:
        return "challenge"
    if status >= 400:
        return "error"
    if status == 204:
        return "empty"
    parts = [p for p in path.split("/") if p]
    if parts[0] == "deletedsecrets":
        if len(parts) == 1:
            return "deleted_page"
        return "bundle" if parts[-1] == "recover" else "deleted_bundle"
    if len(parts) == 1 or parts[-1] == "versions":
        return "page"
    return "deleted_bundle" if method == "DELETE" else "bundle"


def _conformance(method: str, path: str, status: int, body: Any) -> list[str]:
    kind = _kind(method, path, status)
    where = f"{method} {path} {status}"
    if kind in ("challenge", "error"):
        return _check_model(models.KeyVaultError, body, where)
    if kind == "empty":
        return [] if body is None else [f"{where}: a body on 204"]
    if kind in ("page", "deleted_page"):
        if not isinstance(body, dict) or not set(body) <= _PAGE_FIELDS:
            return [f"{where}: a page is {{value, nextLink}}, got {body!r}"]
        link = body.get("nextLink")
        problems = [] if link is None or isinstance(link, str) else [f"{where}: nextLink"]
        item = models.DeletedSecretItem if kind == "deleted_page" else models.SecretItem
        for index, entry in enumerate(body.get("value") or []):
            problems += _check_model(item, entry, f"{where} value[{index}]")
        return problems
    model = models.DeletedSecretBundle if kind == "deleted_bundle" else models.SecretBundle
    return _check_model(model, body, where)


def _rest_fields(model: type[Model]) -> dict[str, tuple[str, Any]]:
    """rest name -> (attribute name, the rest_field) of a generated model."""
    model({})  # the field table is built on first use
    table: dict[str, Any] = model._attr_to_rest_field  # type: ignore[attr-defined]
    return {field._rest_name: (attr, field) for attr, field in table.items()}


def _check_model(model: type[Model], body: Any, where: str) -> list[str]:
    if not isinstance(body, dict):
        return [f"{where}: expected a {model.__name__} object, got {body!r}"]
    fields = _rest_fields(model)
    hints = typing.get_type_hints(model, localns={"_models": models})
    problems = []
    for key, value in body.items():
        if key not in fields:
            problems.append(f"{where}: {key!r} is not a field of {model.__name__}")
            continue
        attr, field = fields[key]
        if value is not None:
            problems += _check_type(hints[attr], value, field._format, f"{where}.{key}")
    return problems


def _check_type(annotation: Any, value: Any, fmt: str | None, where: str) -> list[str]:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(annotation) if a is not type(None)]
        results = [_check_type(arm, value, fmt, where) for arm in arms]
        return [] if any(not r for r in results) else results[0]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{where}: expected an object"]
        inner = typing.get_args(annotation)[1]
        return [p for k, v in value.items() for p in _check_type(inner, v, None, f"{where}.{k}")]
    if origin is list:
        if not isinstance(value, list):
            return [f"{where}: expected an array"]
        inner = typing.get_args(annotation)[0]
        return [
            p for i, v in enumerate(value) for p in _check_type(inner, v, None, f"{where}[{i}]")
        ]
    if isinstance(annotation, type) and issubclass(annotation, Model):
        return _check_model(annotation, value, where)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = {member.value for member in annotation}
        return [] if value in allowed else [f"{where}: {value!r} not in {annotation.__name__}"]
    if annotation is dt.datetime and fmt == "unix-timestamp":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a unix timestamp"]
    if annotation is bool:
        return [] if isinstance(value, bool) else [f"{where}: expected a boolean"]
    if annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected an integer"]
    if annotation in (str, bytes):
        return [] if isinstance(value, str) else [f"{where}: expected a string"]
    return [f"{where}: no check for {annotation!r}"]
