"""The Secret Manager fake is held to Google's definitions, not to our reading of them.

The official SDK (``google-cloud-secret-manager``, REST transport, real
service-account credentials from a throwaway key) runs scripted sequences
against the fake and must succeed; every response the fake sends is checked
against the v1 discovery document shipped in ``google-api-python-client``
(the session fixture fails on any violation), and the checker itself is
tested here on the document's own schemas.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import InvalidOperation
from google.cloud import secretmanager
from google.oauth2 import service_account

from tests.gcpfake import PROJECT, SCOPE, Discovery, GcpFake, crc32c, project_number

PARENT = f"projects/{PROJECT}"


def _client(fake: GcpFake, credentials: Any) -> secretmanager.SecretManagerServiceClient:
    return secretmanager.SecretManagerServiceClient(
        credentials=credentials,
        transport="rest",
        client_options=ClientOptions(api_endpoint=fake.url),
    )


@pytest.fixture
def sdk(gcp_fake_clean: GcpFake, gcp_key_file: Path) -> secretmanager.SecretManagerServiceClient:
    """The official SDK client on the fake, authenticated with the throwaway key."""
    creds = service_account.Credentials.from_service_account_file(str(gcp_key_file), scopes=[SCOPE])
    return _client(gcp_fake_clean, creds)


@pytest.fixture
def sid() -> str:
    return f"conf-{secrets.token_hex(6)}"


@pytest.fixture
def discovery() -> Discovery:
    return Discovery()


def _status(raised: pytest.ExceptionInfo[gexc.GoogleAPICallError]) -> str:
    """The google.rpc status name of an SDK error (the SDK maps REST errors by HTTP code)."""
    response: Any = raised.value.response
    return str(response.json()["error"]["status"])


def _secret(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"replication": {"automatic": {}}, "labels": labels or {}}


def test_sdk_scripted_sequence(sdk: secretmanager.SecretManagerServiceClient, sid: str) -> None:
    """Create, add version, get, access, list with filter, update labels, delete: all succeed."""
    tag = secrets.token_hex(4)
    created = sdk.create_secret(
        request={"parent": PARENT, "secret_id": sid, "secret": _secret({"team": tag})}
    )
    assert created.name == f"projects/{project_number(PROJECT)}/secrets/{sid}"
    version = sdk.add_secret_version(
        request={
            "parent": created.name,
            "payload": {"data": b"s3cret", "data_crc32c": crc32c(b"s3cret")},
        }
    )
    assert (version.name.rsplit("/", 1)[-1], version.state.name) == ("1", "ENABLED")
    got = sdk.get_secret(request={"name": f"{PARENT}/secrets/{sid}"})
    assert (dict(got.labels), got.etag) == ({"team": tag}, created.etag)
    accessed = sdk.access_secret_version(
        request={"name": f"{PARENT}/secrets/{sid}/versions/latest"}
    )
    assert (accessed.payload.data, accessed.payload.data_crc32c) == (b"s3cret", crc32c(b"s3cret"))
    listed = sdk.list_secrets(request={"parent": PARENT, "filter": f"labels.team={tag}"})
    assert [s.name for s in listed] == [created.name]
    assert list(sdk.list_secrets(request={"parent": PARENT, "filter": "labels.team=nobody"})) == []
    updated = sdk.update_secret(
        request={
            "secret": {"name": created.name, "labels": {"team": tag, "x": "y"}, "etag": got.etag},
            "update_mask": {"paths": ["labels"]},
        }
    )
    assert dict(updated.labels) == {"team": tag, "x": "y"}
    assert updated.etag != got.etag
    sdk.delete_secret(request={"name": created.name, "etag": updated.etag})
    with pytest.raises(gexc.NotFound):
        sdk.get_secret(request={"name": created.name})


def test_sdk_version_lifecycle(sdk: secretmanager.SecretManagerServiceClient, sid: str) -> None:
    """Disable, enable, destroy and list versions (newest first, filtered by state)."""
    name = sdk.create_secret(request={"parent": PARENT, "secret_id": sid, "secret": _secret()}).name
    for data in (b"one", b"two", b"three"):
        sdk.add_secret_version(request={"parent": name, "payload": {"data": data}})
    sdk.disable_secret_version(request={"name": f"{name}/versions/2"})
    with pytest.raises(gexc.BadRequest) as raised:
        sdk.access_secret_version(request={"name": f"{name}/versions/2"})
    assert _status(raised) == "FAILED_PRECONDITION"
    sdk.enable_secret_version(request={"name": f"{name}/versions/2"})
    destroyed = sdk.destroy_secret_version(request={"name": f"{name}/versions/1"})
    assert destroyed.state.name == "DESTROYED"
    assert destroyed.destroy_time is not None
    with pytest.raises(gexc.BadRequest) as raised:
        sdk.destroy_secret_version(request={"name": f"{name}/versions/1"})
    assert _status(raised) == "FAILED_PRECONDITION"
    every = [v.name.rsplit("/", 1)[-1] for v in sdk.list_secret_versions(request={"parent": name})]
    assert every == ["3", "2", "1"]
    enabled = sdk.list_secret_versions(request={"parent": name, "filter": "state:ENABLED"})
    assert [v.name.rsplit("/", 1)[-1] for v in enabled] == ["3", "2"]
    sdk.delete_secret(request={"name": name})


def test_sdk_latest_is_the_newest_version_whatever_its_state(
    sdk: secretmanager.SecretManagerServiceClient, sid: str
) -> None:
    """Google's definitions: ``latest`` is "the most recently created SecretVersion" (so a
    disabled or destroyed newest version makes it unreadable), versions list "newest first",
    and ``totalSize`` is "0 when the filter field is set"."""
    name = sdk.create_secret(request={"parent": PARENT, "secret_id": sid, "secret": _secret()}).name
    for data in (b"one", b"two"):
        sdk.add_secret_version(request={"parent": name, "payload": {"data": data}})
    newest = sdk.list_secret_versions(request={"parent": name, "page_size": 1})
    first_page = next(iter(newest.pages))
    assert [v.name.rsplit("/", 1)[-1] for v in first_page.versions] == ["2"]
    assert first_page.total_size == 2
    filtered = sdk.list_secret_versions(request={"parent": name, "filter": "state:ENABLED"})
    assert next(iter(filtered.pages)).total_size == 0
    sdk.disable_secret_version(request={"name": f"{name}/versions/2"})
    with pytest.raises(gexc.BadRequest) as raised:
        sdk.access_secret_version(request={"name": f"{name}/versions/latest"})
    assert _status(raised) == "FAILED_PRECONDITION"
    sdk.destroy_secret_version(request={"name": f"{name}/versions/2"})
    with pytest.raises(gexc.BadRequest) as raised:
        sdk.access_secret_version(request={"name": f"{name}/versions/latest"})
    assert _status(raised) == "FAILED_PRECONDITION"
    sdk.delete_secret(request={"name": name})


def test_sdk_pages_through_a_filtered_listing(
    sdk: secretmanager.SecretManagerServiceClient, gcp_fake: GcpFake
) -> None:
    """The SDK's pager follows nextPageToken across pages of a filtered listing."""
    tag = secrets.token_hex(4)
    names = set()
    for _ in range(7):
        sid = f"page-{secrets.token_hex(5)}"
        names.add(
            sdk.create_secret(
                request={"parent": PARENT, "secret_id": sid, "secret": _secret({"page": tag})}
            ).name
        )
    mark = gcp_fake.mark()
    pager = sdk.list_secrets(
        request={"parent": PARENT, "filter": f"labels.page={tag}", "page_size": 3}
    )
    assert {s.name for s in pager} == names
    assert gcp_fake.ops(mark).count("secrets.list") == 3


def test_sdk_sees_google_errors(
    sdk: secretmanager.SecretManagerServiceClient, gcp_fake: GcpFake, sid: str
) -> None:
    """Duplicate create is 409 ALREADY_EXISTS, a stale etag FAILED_PRECONDITION, bad input 400."""
    name = sdk.create_secret(request={"parent": PARENT, "secret_id": sid, "secret": _secret()}).name
    with pytest.raises(gexc.Conflict) as conflict:
        sdk.create_secret(request={"parent": PARENT, "secret_id": sid, "secret": _secret()})
    assert _status(conflict) == "ALREADY_EXISTS"
    with pytest.raises(gexc.BadRequest) as stale:
        sdk.update_secret(
            request={
                "secret": {"name": name, "labels": {"a": "b"}, "etag": '"stale"'},
                "update_mask": {"paths": ["labels"]},
            }
        )
    assert _status(stale) == "FAILED_PRECONDITION"
    with pytest.raises(gexc.BadRequest) as bad_id:
        sdk.create_secret(request={"parent": PARENT, "secret_id": "no.dot", "secret": _secret()})
    assert _status(bad_id) == "INVALID_ARGUMENT"
    with pytest.raises(gexc.BadRequest) as corrupt:
        sdk.add_secret_version(
            request={"parent": name, "payload": {"data": b"x", "data_crc32c": 1}}
        )
    assert _status(corrupt) == "INVALID_ARGUMENT"
    with pytest.raises(gexc.NotFound):
        sdk.access_secret_version(request={"name": f"{name}/versions/latest"})
    sdk.delete_secret(request={"name": name})


def test_sdk_sees_429_as_resource_exhausted(
    sdk: secretmanager.SecretManagerServiceClient, gcp_fake: GcpFake
) -> None:
    """An injected 429 reaches the SDK as TooManyRequests (RESOURCE_EXHAUSTED)."""
    gcp_fake.throttle(1, retry_after_s=2)
    with pytest.raises(gexc.TooManyRequests) as raised:
        sdk.list_secrets(request={"parent": PARENT, "page_size": 1}, retry=None).pages.__next__()
    assert _status(raised) == "RESOURCE_EXHAUSTED"
    assert raised.value.details[0]["reason"] == "RATE_LIMIT_EXCEEDED"


def test_anonymous_sdk_is_refused(gcp_fake_clean: GcpFake) -> None:
    """Authentication is real: a request without credentials is answered 401."""
    client = _client(gcp_fake_clean, AnonymousCredentials())
    mark = gcp_fake_clean.mark()
    # The SDK's session answers a 401 by refreshing, which anonymous credentials cannot.
    with pytest.raises((gexc.Unauthorized, InvalidOperation)):
        client.get_secret(request={"name": f"{PARENT}/secrets/anything"})
    assert [c.status for c in gcp_fake_clean.calls[mark:]] == [401]


def _raw(fake: GcpFake, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        fake.url + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_paths_outside_the_discovery_document_are_404(gcp_fake: GcpFake) -> None:
    """The fake serves only what the discovery document declares."""
    status, body = _raw(gcp_fake, "GET", f"/v1/{PARENT}/vaults")
    assert (status, body["error"]["status"]) == (404, "NOT_FOUND")


def test_unknown_request_fields_are_rejected_like_google(
    sdk: secretmanager.SecretManagerServiceClient, gcp_fake: GcpFake, sid: str
) -> None:
    """A body field the request schema lacks is a 400, as Google's JSON parser answers."""
    sdk.create_secret(request={"parent": PARENT, "secret_id": sid, "secret": _secret()})
    token = sdk._transport._credentials.token  # what the SDK just authenticated with
    request = urllib.request.Request(
        f"{gcp_fake.url}/v1/{PARENT}/secrets/{sid}:addVersion",
        method="POST",
        data=json.dumps({"payload": {"data": "eA=="}, "paylod": {}}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=10)
    body = json.loads(raised.value.read())
    assert (raised.value.code, body["error"]["status"]) == (400, "INVALID_ARGUMENT")


def test_checker_accepts_a_full_secret(discovery: Discovery) -> None:
    """A Secret as Google renders it passes the checker."""
    secret = {
        "name": "projects/1/secrets/x",
        "replication": {"automatic": {}},
        "createTime": "2024-05-01T10:00:00.123456Z",
        "labels": {"a": "b"},
        "versionAliases": {"current": "3"},
        "etag": '"abc"',
        "expireTime": "2024-06-01T10:00:00Z",
    }
    assert discovery.check(secret, {"$ref": "Secret"}) == []


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ({"name": "x", "lables": {}}, "unknown field 'lables'"),
        ({"labels": {"a": 1}}, "expected a string"),
        ({"versionAliases": {"a": 3}}, "expected a string"),
        ({"createTime": "yesterday"}, "RFC 3339"),
        ({"replication": {"automatic": []}}, "expected an object"),
        ({"topics": {"name": "t"}}, "expected an array"),
    ],
)
def test_checker_finds_schema_violations(discovery: Discovery, value: Any, needle: str) -> None:
    """Unknown names, wrong types, int64 as a number and bad times are violations."""
    problems = discovery.check(value, {"$ref": "Secret"})
    assert any(needle in p for p in problems), problems


def test_checker_knows_enums_and_nested_refs(discovery: Discovery) -> None:
    """A version's state must be one of the document's enum values, nested refs included."""
    good = {"name": "n", "state": "ENABLED", "replicationStatus": {"automatic": {}}}
    assert discovery.check(good, {"$ref": "SecretVersion"}) == []
    bad = {"name": "n", "state": "ACTIVE"}
    assert discovery.check(bad, {"$ref": "SecretVersion"}) != []


def test_checker_validates_error_bodies(discovery: Discovery) -> None:
    """Errors are google.rpc.Status under ``error`` with a status name."""
    ok = {"error": {"code": 404, "message": "m", "status": "NOT_FOUND"}}
    assert discovery.check_error(ok) == []
    assert discovery.check_error({"error": {"code": "404"}}) != []
    assert discovery.check_error({"message": "m"}) != []


def test_every_method_the_store_uses_is_in_the_document(discovery: Discovery) -> None:
    """Routes come from the document: each REST call of the gcp store matches a method."""
    calls = [
        ("POST", f"/v1/{PARENT}/secrets", "secretmanager.projects.secrets.create"),
        ("GET", f"/v1/{PARENT}/secrets", "secretmanager.projects.secrets.list"),
        ("GET", f"/v1/{PARENT}/secrets/s", "secretmanager.projects.secrets.get"),
        ("PATCH", f"/v1/{PARENT}/secrets/s", "secretmanager.projects.secrets.patch"),
        ("POST", f"/v1/{PARENT}/secrets/s:addVersion", "secretmanager.projects.secrets.addVersion"),
        (
            "GET",
            f"/v1/{PARENT}/secrets/s/versions/latest:access",
            "secretmanager.projects.secrets.versions.access",
        ),
        ("GET", f"/v1/{PARENT}/secrets/s/versions", "secretmanager.projects.secrets.versions.list"),
        (
            "POST",
            f"/v1/{PARENT}/secrets/s/versions/3:destroy",
            "secretmanager.projects.secrets.versions.destroy",
        ),
    ]
    for method, path, expected in calls:
        matched = discovery.match(method, path)
        assert matched is not None, path
        assert matched[0].id == expected


@pytest.fixture
def fresh_fake() -> Iterator[GcpFake]:
    """A fake of its own, to look at its violations alone."""
    fake = GcpFake().start()
    try:
        yield fake
    finally:
        fake.stop()


def test_violations_are_recorded(fresh_fake: GcpFake) -> None:
    """A response that breaks the document is recorded (the session fixture fails on any)."""
    fresh_fake.discovery.schemas = {
        **fresh_fake.discovery.schemas,
        "Status": {"type": "object", "properties": {}},
    }
    _raw(fresh_fake, "GET", f"/v1/{PARENT}/secrets/none")
    assert any("unknown field" in v for v in fresh_fake.violations)
