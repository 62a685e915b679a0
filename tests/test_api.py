"""The secrets, users and tokens API (spec sections 4 and 5) against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
from typing import Any

import pytest

from secretmirror import retention
from secretmirror.runtime import Runtime
from tests.conftest import Api

SECRETS = "/api/v1/secrets"


def item(secret_id: str) -> str:
    return f"{SECRETS}/{secret_id}"


def error_code(body: Any) -> str:
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


def header(headers: dict[str, str], name: str) -> str | None:
    """A response header by case-insensitive name (aiohttp's client canonicalizes names)."""
    found = {k.lower(): v for k, v in headers.items()}
    return found.get(name.lower())


async def raw_request(
    api: Api, method: str, path: str, data: bytes, content_type: str = "application/json"
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {api.token}", "Content-Type": content_type}
    # A file-like body: aiohttp warns about large raw bytes bodies, and warnings are errors.
    body = io.BytesIO(data)
    async with api.client.request(method, path, data=body, headers=headers) as response:
        body = await response.json() if response.content_type == "application/json" else None
        return response.status, body


# -- create, read, update, delete -------------------------------------------------


async def test_create_returns_the_secret_at_version_1(api: Api) -> None:
    """POST answers 201 with the secret's fields, its values and version 1."""
    status, body, headers = await api.request(
        "POST", SECRETS, json={"name": "db", "values": {"password": "pw"}}
    )
    assert status == 201
    assert set(body) == {
        "id",
        "name",
        "private",
        "owner",
        "version",
        "created",
        "updated",
        "values",
    }
    assert (body["name"], body["private"], body["version"]) == ("db", False, 1)
    assert body["values"] == {"password": "pw"}
    assert header(headers, "ETag") == '"1"'


async def test_list_returns_metadata_without_values(api: Api) -> None:
    """GET /secrets lists metadata only, never values."""
    await api.create("listed", {"k": "never-listed-value"})
    status, body, _ = await api.request("GET", SECRETS)
    assert status == 200
    assert [s["name"] for s in body["items"]] == ["listed"]
    assert "values" not in body["items"][0]
    assert "never-listed-value" not in json.dumps(body)


async def test_put_replaces_all_values(api: Api) -> None:
    """PUT replaces the whole values object and bumps the version."""
    created = await api.create("put-me", {"a": "1", "b": "2"})
    status, body, _ = await api.request(
        "PUT", item(created["id"]), json={"name": "put-me", "values": {"c": "3"}}
    )
    assert status == 200
    assert body["values"] == {"c": "3"}
    assert body["version"] == 2
    _, read, _ = await api.request("GET", item(created["id"]))
    assert read["values"] == {"c": "3"}


async def test_put_keeps_a_private_secret_private(api: Api) -> None:
    """PUT without `private` keeps the secret's visibility instead of publishing it."""
    created = await api.create("mine", {"a": "1"}, private=True)
    status, body, _ = await api.request(
        "PUT", item(created["id"]), json={"name": "mine", "values": {"a": "2"}}
    )
    assert status == 200
    assert body["private"] is True


async def test_put_without_values_is_invalid(api: Api) -> None:
    """PUT needs both name and values."""
    created = await api.create("put-partial", {"a": "1"})
    status, body, _ = await api.request("PUT", item(created["id"]), json={"name": "put-partial"})
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_patch_merges_values(api: Api) -> None:
    """PATCH adds and changes keys and keeps the ones it does not mention."""
    created = await api.create("merge-me", {"a": "1", "b": "2"})
    status, body, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"b": "20", "c": "30"}}
    )
    assert status == 200
    assert body["values"] == {"a": "1", "b": "20", "c": "30"}
    _, read, _ = await api.request("GET", item(created["id"]))
    assert read["values"] == {"a": "1", "b": "20", "c": "30"}


async def test_patch_null_removes_a_key(api: Api) -> None:
    """PATCH with a key set to null removes that key."""
    created = await api.create("drop-key", {"a": "1", "b": "2"})
    status, body, _ = await api.request("PATCH", item(created["id"]), json={"values": {"a": None}})
    assert status == 200
    assert body["values"] == {"b": "2"}


async def test_patch_removing_every_key_is_invalid(api: Api) -> None:
    """A secret keeps at least one key: PATCH removing all of them is 422."""
    created = await api.create("last-key", {"a": "1"})
    status, body, _ = await api.request("PATCH", item(created["id"]), json={"values": {"a": None}})
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_patch_renames_and_keeps_values(api: Api) -> None:
    """PATCH with only a name renames the secret and keeps its values."""
    created = await api.create("old-name", {"a": "1"})
    status, body, _ = await api.request("PATCH", item(created["id"]), json={"name": "new-name"})
    assert status == 200
    assert (body["name"], body["values"], body["version"]) == ("new-name", {"a": "1"}, 2)


async def test_delete_removes_the_secret(api: Api) -> None:
    """DELETE answers 204 and the secret is gone afterwards."""
    created = await api.create("doomed", {"a": "1"})
    status, _, _ = await api.request("DELETE", item(created["id"]))
    assert status == 204
    status, body, _ = await api.request("GET", item(created["id"]))
    assert status == 404
    assert error_code(body) == "not_found"


async def test_unknown_secret_is_404(api: Api) -> None:
    """A well-formed but unknown id and a malformed id are both 404."""
    for secret_id in ("6c8d4a2e-0b8f-4a55-9c1d-5d8b0e6f3a21", "not-a-uuid"):
        status, body, _ = await api.request("GET", item(secret_id))
        assert status == 404
        assert error_code(body) == "not_found"


async def test_every_change_bumps_the_version_by_one(api: Api) -> None:
    """Each PATCH, PUT and rename returns the previous version plus one."""
    created = await api.create("counter", {"a": "1"})
    versions = [created["version"]]
    for method, payload in [
        ("PATCH", {"values": {"a": "2"}}),
        ("PUT", {"name": "counter", "values": {"a": "3"}}),
        ("PATCH", {"name": "counter-2"}),
    ]:
        _, body, _ = await api.request(method, item(created["id"]), json=payload)
        versions.append(body["version"])
    assert versions == [1, 2, 3, 4]


# -- If-Match ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "payload"),
    [
        ("PATCH", {"values": {"a": "x"}}),
        ("PUT", {"name": "guarded", "values": {"a": "x"}}),
        ("DELETE", None),
    ],
)
async def test_stale_if_match_is_412(api: Api, method: str, payload: Any) -> None:
    """A write whose If-Match names an older version fails with 412 and changes nothing."""
    created = await api.create("guarded", {"a": "1"})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": "2"}})
    status, body, _ = await api.request(
        method, item(created["id"]), json=payload, headers={"If-Match": '"1"'}
    )
    assert status == 412
    assert error_code(body) == "precondition_failed"
    _, read, _ = await api.request("GET", item(created["id"]))
    assert (read["version"], read["values"]) == (2, {"a": "2"})


async def test_current_if_match_is_accepted(api: Api) -> None:
    """A write whose If-Match names the current version succeeds."""
    created = await api.create("fresh", {"a": "1"})
    status, body, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"a": "2"}}, headers={"If-Match": '"1"'}
    )
    assert status == 200
    assert body["version"] == 2


async def test_bare_number_if_match_is_accepted(api: Api) -> None:
    """If-Match without the quotes of an entity tag still names the version."""
    created = await api.create("bare", {"a": "1"})
    status, _, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"a": "2"}}, headers={"If-Match": "1"}
    )
    assert status == 200
    status, _, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"a": "3"}}, headers={"If-Match": "1"}
    )
    assert status == 412


async def test_malformed_if_match_is_400(api: Api) -> None:
    """If-Match must hold a quoted version number."""
    created = await api.create("odd-etag", {"a": "1"})
    for header in ('"one"', '"²"', '"-1"', "²", '"1', 'W/"1"', '"1234567890"', "*"):
        status, body, _ = await api.request(
            "PATCH", item(created["id"]), json={"values": {"a": "2"}}, headers={"If-Match": header}
        )
        assert status == 400, header
        assert error_code(body) == "bad_request"


async def test_stale_if_match_leaves_no_event(api: Api, runtime: Runtime) -> None:
    """A write refused by If-Match does not append to the event log."""
    created = await api.create("no-trace", {"a": "1"})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": "2"}})
    status, _, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"a": "3"}}, headers={"If-Match": '"1"'}
    )
    assert status == 412
    versions = await runtime.pool.fetch(
        "SELECT version FROM events WHERE secret_id = $1 ORDER BY version", created["id"]
    )
    assert [r["version"] for r in versions] == [1, 2]


# -- names ------------------------------------------------------------------------


async def test_duplicate_name_is_409(api: Api) -> None:
    """Creating a second shared secret with a taken name is 409."""
    await api.create("taken", {"a": "1"})
    status, body, _ = await api.request(
        "POST", SECRETS, json={"name": "taken", "values": {"a": "2"}}
    )
    assert status == 409
    assert error_code(body) == "name_taken"


async def test_rename_onto_a_taken_name_is_409(api: Api) -> None:
    """Renaming onto another shared secret's name is 409 and leaves the secret unchanged."""
    await api.create("first", {"a": "1"})
    second = await api.create("second", {"a": "2"})
    status, body, _ = await api.request("PATCH", item(second["id"]), json={"name": "first"})
    assert status == 409
    assert error_code(body) == "name_taken"
    _, read, _ = await api.request("GET", item(second["id"]))
    assert (read["name"], read["version"]) == ("second", 1)


async def test_concurrent_creates_of_one_name_have_one_winner(api: Api) -> None:
    """Of 20 concurrent creates of one name exactly one is 201, the others 409."""
    results = await asyncio.gather(
        *(
            api.request("POST", SECRETS, json={"name": "race", "values": {"n": str(n)}})
            for n in range(20)
        )
    )
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [201] + [409] * 19
    _, listed, _ = await api.request("GET", SECRETS, params={"name": "race"})
    assert len(listed["items"]) == 1


async def test_private_names_are_unique_per_owner(api: Api) -> None:
    """Two users may each have a private secret of one name; one user may not have two."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    bob = api.as_token(await api.make_user("bob", "writer"))
    await alice.create("own", {"a": "1"}, private=True)
    await bob.create("own", {"a": "2"}, private=True)
    status, body, _ = await alice.request(
        "POST", SECRETS, json={"name": "own", "values": {"a": "3"}, "private": True}
    )
    assert status == 409
    assert error_code(body) == "name_taken"


async def test_a_private_name_may_equal_a_shared_name(api: Api) -> None:
    """A private secret does not collide with a shared secret of the same name."""
    await api.create("both", {"a": "shared"})
    created = await api.create("both", {"a": "private"}, private=True)
    assert created["private"] is True


# -- private secrets --------------------------------------------------------------


async def test_private_secret_is_visible_to_its_owner(api: Api) -> None:
    """The owner reads and lists their private secret."""
    writer = api.as_token(await api.make_user("owner", "writer"))
    created = await writer.create("diary", {"a": "1"}, private=True)
    status, body, _ = await writer.request("GET", item(created["id"]))
    assert status == 200
    assert body["values"] == {"a": "1"}
    _, listed, _ = await writer.request("GET", SECRETS)
    assert [s["id"] for s in listed["items"]] == [created["id"]]


@pytest.mark.parametrize("role", ["admin", "writer", "reader"])
async def test_private_secret_is_404_for_every_other_user(api: Api, role: str) -> None:
    """Another user, admins included, gets 404 for every route of a private secret."""
    owner = api.as_token(await api.make_user("owner", "writer"))
    other = api.as_token(await api.make_user("other", role))
    created = await owner.create("diary", {"a": "1"}, private=True)
    path = item(created["id"])
    calls: list[tuple[str, str, Any]] = [
        ("GET", path, None),
        ("GET", path + "?version=1", None),
        ("GET", path + "/history", None),
    ]
    if role != "reader":
        calls += [
            ("PATCH", path, {"values": {"a": "2"}}),
            ("PUT", path, {"name": "diary", "values": {"a": "2"}}),
            ("DELETE", path, None),
        ]
    for method, url, payload in calls:
        status, body, _ = await other.request(method, url, json=payload)
        assert status == 404, (method, url)
        assert error_code(body) == "not_found"
    _, listed, _ = await other.request("GET", SECRETS)
    assert listed["items"] == []


async def test_admin_token_sees_no_private_secret_of_others(api: Api) -> None:
    """The bootstrap admin gets 404 for a writer's private secret."""
    owner = api.as_token(await api.make_user("owner", "writer"))
    created = await owner.create("diary", {"a": "1"}, private=True)
    status, _, _ = await api.request("GET", item(created["id"]))
    assert status == 404


# -- roles ------------------------------------------------------------------------


async def test_reader_cannot_write(api: Api) -> None:
    """A reader gets 403 for create, PATCH, PUT and DELETE."""
    created = await api.create("read-only", {"a": "1"})
    reader = api.as_token(await api.make_user("rita", "reader"))
    path = item(created["id"])
    for method, url, payload in [
        ("POST", SECRETS, {"name": "nope", "values": {"a": "1"}}),
        ("PATCH", path, {"values": {"a": "2"}}),
        ("PUT", path, {"name": "read-only", "values": {"a": "2"}}),
        ("DELETE", path, None),
    ]:
        status, body, _ = await reader.request(method, url, json=payload)
        assert status == 403, method
        assert error_code(body) == "forbidden"
    _, read, _ = await api.request("GET", path)
    assert (read["version"], read["values"]) == (1, {"a": "1"})


async def test_reader_can_read(api: Api) -> None:
    """A reader reads shared secrets and their history."""
    created = await api.create("readable", {"a": "1"})
    reader = api.as_token(await api.make_user("rita", "reader"))
    status, body, _ = await reader.request("GET", item(created["id"]))
    assert (status, body["values"]) == (200, {"a": "1"})
    status, _, _ = await reader.request("GET", item(created["id"]) + "/history")
    assert status == 200


@pytest.mark.parametrize("role", ["writer", "reader"])
async def test_non_admin_cannot_manage_users(api: Api, role: str) -> None:
    """Only an admin creates or lists users."""
    user = api.as_token(await api.make_user("someone", role))
    status, body, _ = await user.request(
        "POST", "/api/v1/users", json={"name": "sneaky", "role": "admin"}
    )
    assert status == 403
    assert error_code(body) == "forbidden"
    status, _, _ = await user.request("GET", "/api/v1/users")
    assert status == 403


@pytest.mark.parametrize("role", ["writer", "reader"])
async def test_non_admin_cannot_use_admin_routes(api: Api, role: str) -> None:
    """/admin routes are 403 for writers and readers."""
    user = api.as_token(await api.make_user("someone", role))
    for method, path in [
        ("GET", "/admin/v1/status"),
        ("POST", "/admin/v1/dead-letters/retry"),
    ]:
        status, body, _ = await user.request(method, path)
        assert status == 403, path
        assert error_code(body) == "forbidden"


async def test_admin_can_use_admin_routes(api: Api) -> None:
    """The admin reads the status."""
    status, body, _ = await api.request("GET", "/admin/v1/status")
    assert status == 200
    assert body["stores"]["primary"]["type"] == "sql"


async def test_non_admin_cannot_create_tokens_for_others(api: Api) -> None:
    """A writer may not mint a token for another user."""
    writer = api.as_token(await api.make_user("wanda", "writer"))
    await api.make_user("victim", "admin")
    status, body, _ = await writer.request(
        "POST", "/api/v1/tokens", json={"user": "victim", "name": "stolen"}
    )
    assert status == 403
    assert error_code(body) == "forbidden"


# -- tokens -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer ", "Bearer wrong-token", "Basic YWRtaW46YWRtaW4=", "bearer"],
)
async def test_missing_or_wrong_token_is_401(api: Api, authorization: str | None) -> None:
    """Every /api and /admin route needs a valid bearer token."""
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in [
        ("GET", SECRETS),
        ("POST", SECRETS),
        ("GET", "/api/v1/users"),
        ("GET", "/api/v1/tokens"),
        ("GET", "/admin/v1/status"),
    ]:
        async with api.client.request(method, path, headers=headers) as response:
            assert response.status == 401, (method, path)
            assert error_code(await response.json()) == "unauthorized"


async def test_revoked_token_is_401(api: Api) -> None:
    """A revoked token is refused."""
    status, created, _ = await api.request("POST", "/api/v1/tokens", json={"name": "short"})
    assert status == 201
    client = api.as_token(created["token"])
    assert (await client.request("GET", SECRETS))[0] == 200
    status, _, _ = await api.request("DELETE", f"/api/v1/tokens/{created['id']}")
    assert status == 204
    status, body, _ = await client.request("GET", SECRETS)
    assert status == 401
    assert error_code(body) == "unauthorized"


async def test_expired_token_is_401(api: Api) -> None:
    """A token created with expires_in_s=1 is refused once it expires."""
    status, created, _ = await api.request(
        "POST", "/api/v1/tokens", json={"name": "brief", "expires_in_s": 1}
    )
    assert status == 201
    assert created["expires"] is not None
    client = api.as_token(created["token"])
    deadline = time.monotonic() + 10
    status = 200
    while status == 200 and time.monotonic() < deadline:
        status, _, _ = await client.request("GET", SECRETS)
        await asyncio.sleep(0.05)
    assert status == 401


async def test_token_is_shown_once_and_stored_as_a_hash(api: Api, runtime: Runtime) -> None:
    """The token string is in the create response only; the database holds no copy of it."""
    status, created, _ = await api.request("POST", "/api/v1/tokens", json={"name": "once"})
    assert status == 201
    token = created["token"]
    _, listed, _ = await api.request("GET", "/api/v1/tokens")
    assert token not in json.dumps(listed)
    assert all("token" not in t for t in listed["items"])
    stored = await runtime.pool.fetch("SELECT hash::text AS h, name FROM tokens")
    assert token not in json.dumps([dict(r) for r in stored])


async def test_user_cannot_revoke_another_users_token(api: Api) -> None:
    """A non-admin revoking someone else's token gets 404 and the token keeps working."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    bob_token = await api.make_user("bob", "writer")
    _, tokens, _ = await api.request("GET", "/api/v1/tokens")
    bob_id = next(t["id"] for t in tokens["items"] if t["user"] == "bob")
    status, _, _ = await alice.request("DELETE", f"/api/v1/tokens/{bob_id}")
    assert status == 404
    assert (await api.as_token(bob_token).request("GET", SECRETS))[0] == 200


async def test_user_lists_only_their_own_tokens(api: Api) -> None:
    """A non-admin's token list holds only their tokens."""
    alice = api.as_token(await api.make_user("alice", "writer"))
    await api.make_user("bob", "writer")
    _, listed, _ = await alice.request("GET", "/api/v1/tokens")
    assert {t["user"] for t in listed["items"]} == {"alice"}


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "t", "user": None},
        {"name": "t", "expires_in_s": None},
        {"name": "t", "user": "bad\x00name"},
        {"name": "t", "expires_in_s": 0},
        {"name": "t", "expires_in_s": 1.5},
        {"name": "t", "expires_in_s": True},
    ],
)
async def test_invalid_token_fields_are_422(api: Api, payload: dict[str, Any]) -> None:
    """A null user or expiry, a user that is not a name, or a bad expiry is 422."""
    status, body, _ = await api.request("POST", "/api/v1/tokens", json=payload)
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_token_for_an_unknown_user_is_404(api: Api) -> None:
    """An admin minting a token for a user that does not exist gets 404."""
    status, body, _ = await api.request(
        "POST", "/api/v1/tokens", json={"name": "t", "user": "nobody"}
    )
    assert status == 404
    assert error_code(body) == "not_found"


async def test_whole_float_expiry_is_accepted(api: Api) -> None:
    """expires_in_s 600.0 is the integer 600 (as JSON Schema counts it)."""
    status, body, _ = await api.request(
        "POST", "/api/v1/tokens", json={"name": "t", "expires_in_s": 600.0}
    )
    assert status == 201
    assert body["expires"] is not None


# -- users ------------------------------------------------------------------------


async def test_duplicate_user_is_409(api: Api) -> None:
    """Creating a user whose name is taken is 409."""
    await api.make_user("dup", "reader")
    status, body, _ = await api.request(
        "POST", "/api/v1/users", json={"name": "dup", "role": "writer"}
    )
    assert status == 409
    assert error_code(body) == "conflict"


async def test_invalid_role_is_422(api: Api) -> None:
    """A role outside admin, writer, reader is 422."""
    status, body, _ = await api.request(
        "POST", "/api/v1/users", json={"name": "odd", "role": "root"}
    )
    assert status == 422
    assert error_code(body) == "invalid_field"


# -- listing ----------------------------------------------------------------------


async def test_pagination_returns_every_existing_secret_once_under_concurrent_creates(
    api: Api,
) -> None:
    """Paging returns each pre-existing secret exactly once while others are being created."""
    existing = {(await api.create(f"s-{n:03d}", {"n": str(n)}))["id"] for n in range(60)}
    paging_done = asyncio.Event()
    created_during: list[str] = []

    async def create_more() -> None:
        n = 0
        while not paging_done.is_set():
            # Names that sort before, between and after the existing ones.
            for name in (f"a-{n}", f"s-{n % 60:03d}-x{n}", f"z-{n}"):
                created_during.append((await api.create(name, {"n": str(n)}))["id"])
            n += 1

    creator = asyncio.create_task(create_more())
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        status, page, _ = await api.request("GET", SECRETS, params=params)
        assert status == 200
        assert len(page["items"]) <= 7
        seen.extend(s["id"] for s in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        await asyncio.sleep(0)
    paging_done.set()
    await creator
    assert pages >= 9
    assert len(created_during) > 0
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)


async def test_last_page_has_no_cursor(api: Api) -> None:
    """A page that ends the list has next_cursor null; an exact fit does not need another page."""
    for n in range(4):
        await api.create(f"p-{n}", {"a": "1"})
    _, first, _ = await api.request("GET", SECRETS, params={"limit": "2"})
    assert first["next_cursor"] is not None
    _, second, _ = await api.request(
        "GET", SECRETS, params={"limit": "2", "cursor": first["next_cursor"]}
    )
    assert [s["name"] for s in first["items"] + second["items"]] == ["p-0", "p-1", "p-2", "p-3"]
    assert second["next_cursor"] is None


async def test_name_prefix_filters_the_list(api: Api) -> None:
    """name_prefix keeps only the secrets whose name starts with it."""
    for name in ("app.db", "app.cache", "apple", "web.db"):
        await api.create(name, {"a": "1"})
    _, body, _ = await api.request("GET", SECRETS, params={"name_prefix": "app."})
    assert [s["name"] for s in body["items"]] == ["app.cache", "app.db"]


async def test_name_prefix_is_not_a_pattern(api: Api) -> None:
    """name_prefix matches literally: `_` and `%` are not wildcards."""
    for name in ("a_b", "axb"):
        await api.create(name, {"a": "1"})
    _, body, _ = await api.request("GET", SECRETS, params={"name_prefix": "a_"})
    assert [s["name"] for s in body["items"]] == ["a_b"]


async def test_name_filters_the_list(api: Api) -> None:
    """name keeps only the secret of exactly that name."""
    for name in ("one", "one-more"):
        await api.create(name, {"a": "1"})
    _, body, _ = await api.request("GET", SECRETS, params={"name": "one"})
    assert [s["name"] for s in body["items"]] == ["one"]


async def test_private_filters_the_list(api: Api) -> None:
    """private=true lists only the caller's private secrets, private=false only shared ones."""
    await api.create("shared", {"a": "1"})
    await api.create("hidden", {"a": "1"}, private=True)
    _, private, _ = await api.request("GET", SECRETS, params={"private": "true"})
    _, shared, _ = await api.request("GET", SECRETS, params={"private": "false"})
    assert [s["name"] for s in private["items"]] == ["hidden"]
    assert [s["name"] for s in shared["items"]] == ["shared"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "abc"},
        {"limit": "²"},
        {"private": "maybe"},
        {"cursor": "not a cursor"},
        {"cursor": "WyJhIiwxXQ"},  # ["a",1]: a cursor whose id is not a string
        {"cursor": "eyJhIjoxfQ"},  # {"a":1}
    ],
)
async def test_bad_list_parameters_are_400(api: Api, params: dict[str, str]) -> None:
    """Malformed limit, private and cursor parameters are 400."""
    status, body, _ = await api.request("GET", SECRETS, params=params)
    assert status == 400
    assert error_code(body) == "bad_request"


@pytest.mark.parametrize(
    ("path", "params"),
    [
        (SECRETS, {"name_prefx": "a"}),
        (SECRETS, {"private": ""}),
        ("/api/v1/users", {"x": "1"}),
        ("/api/v1/tokens", {"all": "true"}),
    ],
)
async def test_unknown_or_empty_query_parameters_are_400(
    api: Api, path: str, params: dict[str, str]
) -> None:
    """A misspelt query parameter is refused rather than ignored (it would widen a list)."""
    status, body, _ = await api.request("GET", path, params=params)
    assert status == 400
    assert error_code(body) == "bad_request"


async def test_an_unknown_field_or_query_parameter_is_echoed_cut_short(api: Api) -> None:
    """A huge unknown field or query parameter is named by its first 64 characters only."""
    huge = "f" * 64 + "x" * 9_936
    status, body, _ = await api.request("POST", SECRETS, json={"name": "a", huge: 1})
    assert (status, body["error"]["message"]) == (422, f"unknown field '{'f' * 64}…'")
    huge = "q" * 64 + "x" * 4_000  # within aiohttp's 8 KiB request line
    status, body, _ = await api.request("GET", SECRETS, params={huge: "1"})
    assert (status, body["error"]["message"]) == (400, f"unknown query parameter '{'q' * 64}…'")


async def test_nul_in_a_list_filter_matches_nothing(api: Api) -> None:
    """A NUL character in a filter matches no secret (and is not a database failure)."""
    await api.create("a", {"k": "1"})
    for params in ({"name": "a\x00"}, {"name_prefix": "\x00"}):
        status, body, _ = await api.request("GET", SECRETS, params=params)
        assert status == 200, params
        assert body == {"items": [], "next_cursor": None}


# -- validation and limits --------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "-lead", ".lead", "has space", "a/b", "é", "x" * 256, 5, None]
)
async def test_invalid_name_is_422(api: Api, name: Any) -> None:
    """A name outside the spec's pattern is 422."""
    status, body, _ = await api.request("POST", SECRETS, json={"name": name, "values": {"a": "1"}})
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_longest_valid_name_is_accepted(api: Api) -> None:
    """A 255-character name is valid."""
    created = await api.create("n" * 255, {"a": "1"})
    assert created["name"] == "n" * 255


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"": "x"},
        {"bad key": "x"},
        {"k" * 256: "x"},
        {"k": 1},
        {"k": None},
        {"k": ["x"]},
        {"k": {"x": "y"}},
        ["x"],
        "x",
        None,
    ],
)
async def test_invalid_values_are_422(api: Api, values: Any) -> None:
    """Values must be a non-empty object of valid keys to strings."""
    status, body, _ = await api.request("POST", SECRETS, json={"name": "v", "values": values})
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_lone_surrogate_in_a_value_is_422(api: Api) -> None:
    """A value that is not encodable as UTF-8 is an invalid field, not a server error."""
    status, body = await raw_request(
        api, "POST", SECRETS, b'{"name": "s", "values": {"k": "\\ud800"}}'
    )
    assert status == 422
    assert error_code(body) == "invalid_field"


@pytest.mark.parametrize(
    "payload",
    [
        {"name": "v", "values": {"a": "1"}, "private": "yes"},
        {"name": "v", "values": {"a": "1"}, "colour": "red"},
        {"values": {"a": "1"}},
    ],
)
async def test_invalid_create_fields_are_422(api: Api, payload: dict[str, Any]) -> None:
    """A non-boolean private, an unknown field or a missing name is 422."""
    status, body, _ = await api.request("POST", SECRETS, json=payload)
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_invalid_patch_is_422_before_if_match(api: Api) -> None:
    """A malformed PATCH is 422 even when its If-Match is stale too."""
    created = await api.create("checked-first", {"a": "1"})
    status, body, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"a": {}}}, headers={"If-Match": '"9"'}
    )
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_invalid_put_is_422_before_if_match(api: Api) -> None:
    """A PUT with empty values is 422 even when its If-Match is stale too."""
    created = await api.create("put-checked-first", {"a": "1"})
    status, body, _ = await api.request(
        "PUT",
        item(created["id"]),
        json={"name": "put-checked-first", "values": {}},
        headers={"If-Match": '"9"'},
    )
    assert status == 422
    assert error_code(body) == "invalid_field"


@pytest.mark.parametrize("field", ["name", "private", "values"])
async def test_null_field_in_patch_is_422(api: Api, field: str) -> None:
    """An explicit null for name, private or values is 422, not "unchanged"."""
    created = await api.create("nulled", {"a": "1"})
    status, body, _ = await api.request("PATCH", item(created["id"]), json={field: None})
    assert status == 422
    assert error_code(body) == "invalid_field"


async def test_invalid_patch_key_is_422(api: Api) -> None:
    """PATCH validates keys too, and changes nothing when one is bad."""
    created = await api.create("patched", {"a": "1"})
    status, body, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"bad key": "x"}}
    )
    assert status == 422
    assert error_code(body) == "invalid_field"
    _, read, _ = await api.request("GET", item(created["id"]))
    assert read["version"] == 1


@pytest.mark.parametrize(
    "data",
    [
        b"{",
        b"",
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"a string"',
        b"[" * 100_000,
        b'{"name": "big", "values": {"k": "v"}, "n": ' + b"9" * 10_000 + b"}",
    ],
)
async def test_malformed_json_is_400(api: Api, data: bytes) -> None:
    """A body that is not a JSON object is 400."""
    status, body = await raw_request(api, "POST", SECRETS, data)
    assert status == 400
    assert error_code(body) == "bad_request"


async def test_unknown_charset_is_400(api: Api) -> None:
    """A body in a charset nobody knows is 400, not a server error."""
    status, body = await raw_request(
        api,
        "POST",
        SECRETS,
        b'{"name": "x", "values": {"a": "1"}}',
        content_type="application/json; charset=no-such-charset",
    )
    assert status == 400
    assert error_code(body) == "bad_request"


def _values_of_size(size: int) -> dict[str, str]:
    """Values whose canonical JSON (`{"k":"..."}`) is exactly ``size`` bytes."""
    return {"k": "x" * (size - len('{"k":""}'))}


async def test_values_at_the_size_cap_are_accepted(api: Api, runtime: Runtime) -> None:
    """Values of exactly max_secret_bytes are accepted."""
    created = await api.create("at-cap", _values_of_size(runtime.size_cap))
    assert created["version"] == 1


async def test_values_over_the_size_cap_are_413(api: Api, runtime: Runtime) -> None:
    """Values one byte over max_secret_bytes are 413."""
    status, body, _ = await api.request(
        "POST", SECRETS, json={"name": "too-big", "values": _values_of_size(runtime.size_cap + 1)}
    )
    assert status == 413
    assert error_code(body) == "too_large"


async def test_patch_growing_over_the_size_cap_is_413(api: Api, runtime: Runtime) -> None:
    """A PATCH whose merged values exceed the cap is 413 and changes nothing."""
    created = await api.create("growing", _values_of_size(runtime.size_cap - 100))
    status, body, _ = await api.request(
        "PATCH", item(created["id"]), json={"values": {"more": "y" * 200}}
    )
    assert status == 413
    assert error_code(body) == "too_large"


@pytest.mark.parametrize("settings_overrides", [{"max_secret_bytes": 100}])
async def test_configured_size_cap_applies(api: Api) -> None:
    """max_secret_bytes from the settings is the cap the API enforces."""
    status, _, _ = await api.request(
        "POST", SECRETS, json={"name": "small", "values": _values_of_size(100)}
    )
    assert status == 201
    status, body, _ = await api.request(
        "POST", SECRETS, json={"name": "small-2", "values": _values_of_size(101)}
    )
    assert status == 413
    assert error_code(body) == "too_large"


async def test_body_over_1_mib_is_413(api: Api) -> None:
    """A request body over 1 MiB is 413 with the error JSON."""
    payload = json.dumps({"name": "huge", "values": {"k": "x" * (1024 * 1024 + 10)}}).encode()
    status, body = await raw_request(api, "POST", SECRETS, payload)
    assert status == 413
    assert error_code(body) == "too_large"


# -- history and versions ---------------------------------------------------------


async def test_history_lists_events_without_values(api: Api) -> None:
    """History lists version, kind, actor and recorded_at per event and never a value."""
    canary = "canary-" + secrets.token_hex(8)
    created = await api.create("audited", {"a": canary})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": canary + "2"}})
    await api.request("PATCH", item(created["id"]), json={"name": "audited-2"})
    status, body, _ = await api.request("GET", item(created["id"]) + "/history")
    assert status == 200
    assert [(e["version"], e["kind"], e["actor"]) for e in body["items"]] == [
        (1, "create", "admin"),
        (2, "update", "admin"),
        (3, "rename", "admin"),
    ]
    assert all(set(e) == {"version", "kind", "actor", "recorded_at"} for e in body["items"])
    assert canary not in json.dumps(body)


async def test_history_names_the_acting_user(api: Api) -> None:
    """The actor of an event is the user who made the change."""
    writer = api.as_token(await api.make_user("wendy", "writer"))
    created = await writer.create("by-wendy", {"a": "1"})
    _, body, _ = await api.request("GET", item(created["id"]) + "/history")
    assert [e["actor"] for e in body["items"]] == ["wendy"]


async def test_older_version_is_readable(api: Api) -> None:
    """?version=N returns the values as they were at version N."""
    created = await api.create("versioned", {"a": "1"})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": "2"}})
    status, body, headers = await api.request("GET", item(created["id"]), params={"version": "1"})
    assert status == 200
    assert body["values"] == {"a": "1"}
    assert header(headers, "X-Secret-Source") == "log"
    status, body, _ = await api.request("GET", item(created["id"]), params={"version": "2"})
    assert body["values"] == {"a": "2"}


async def test_future_version_is_404(api: Api) -> None:
    """A version the secret never had is 404."""
    created = await api.create("young", {"a": "1"})
    status, body, _ = await api.request("GET", item(created["id"]), params={"version": "2"})
    assert status == 404
    assert error_code(body) == "not_found"


@pytest.mark.parametrize("version", ["0", "-1", "x", "²", "99999999999"])
async def test_bad_version_parameter_is_400(api: Api, version: str) -> None:
    """?version must be a whole number from 1."""
    created = await api.create("young", {"a": "1"})
    status, body, _ = await api.request("GET", item(created["id"]), params={"version": version})
    assert status == 400
    assert error_code(body) == "bad_request"


@pytest.mark.parametrize("settings_overrides", [{"history": {"keep_versions": 1}}])
async def test_purged_version_is_410(api: Api, runtime: Runtime) -> None:
    """Once retention purged a version's snapshot, ?version=N is 410; the current one reads."""
    created = await api.create("purged", {"a": "1"})
    await api.request("PATCH", item(created["id"]), json={"values": {"a": "2"}})
    assert await retention.purge_once(runtime) == 1
    status, body, _ = await api.request("GET", item(created["id"]), params={"version": "1"})
    assert status == 410
    assert error_code(body) == "gone"
    status, body, _ = await api.request("GET", item(created["id"]), params={"version": "2"})
    assert (status, body["values"]) == (200, {"a": "2"})


# -- misc -------------------------------------------------------------------------


async def test_every_response_carries_a_request_id(api: Api) -> None:
    """Responses carry X-Request-Id, echoing the caller's when given."""
    _, _, headers = await api.request("GET", SECRETS, headers={"X-Request-Id": "abc123"})
    assert header(headers, "X-Request-Id") == "abc123"


async def test_wrong_method_is_405_with_allow(api: Api) -> None:
    """An unsupported method is 405 in the error JSON, with the Allow header."""
    status, body, headers = await api.request("TRACE", SECRETS)
    assert status == 405
    assert error_code(body) == "method_not_allowed"
    assert set((header(headers, "Allow") or "").replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_healthz_needs_no_token(api: Api) -> None:
    """/healthz answers 200 without a token."""
    status, body, _ = await api.as_token(None).request("GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
