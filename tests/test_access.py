"""Access control (spec section 13), black-box: a daemon subprocess, real PostgreSQL, HTTP.

Scoped tokens (read/list/write x in/out of scope x private/shared), the user
lifecycle (disable, delete), tokens made for someone else, private-era versions
and who may change ``private``; and the CLI for users and scoped tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from secretmirror.access import Principal
from secretmirror.auth import TokenCache
from secretmirror.daemon import make_app
from secretmirror.runtime import Runtime
from tests.blackbox import Http, cli, poll, serve_daemon
from tests.conftest import ADMIN_TOKEN, Api
from tests.daemon_proc import DaemonProcess
from tests.pg import TestPostgres

SECRETS = "/api/v1/secrets"


@pytest.fixture(scope="module")
async def daemon(
    postgres: TestPostgres, template: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[DaemonProcess]:
    async for found in serve_daemon(postgres, template, tmp_path_factory.mktemp("access") / "data"):
        yield found


@pytest.fixture(scope="module")
def admin(daemon: DaemonProcess) -> Http:
    return Http(daemon.url)


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def names_listed(http: Http, **params: str) -> set[str]:
    status, body = http("GET", SECRETS, params={"limit": "1000", **params})
    assert status == 200, body
    return {item["name"] for item in body["items"]}


class World:
    """A writer with its own token, and a shared and a private secret in and out of the
    scope ``<prefix>*``."""

    def __init__(self, admin: Http) -> None:
        self.admin = admin
        self.prefix = unique("app")
        self.user = unique("w")
        self.user_id, own = admin.user(self.user, "writer")
        self.own = admin.as_token(own)
        self.ids: dict[str, str] = {}
        for key, name, private in (
            ("in_shared", f"{self.prefix}-shared", False),
            ("in_private", f"{self.prefix}-private", True),
            ("out_shared", unique("zz-shared"), False),
            ("out_private", unique("zz-private"), True),
        ):
            self.ids[key] = self.own.create(name, {"k": f"value-of-{key}"}, private)["id"]

    def scoped(self, *actions: str) -> Http:
        token = self.own.make_token(
            unique("scoped"), scopes=[{"names": [f"{self.prefix}*"], "actions": list(actions)}]
        )
        return self.own.as_token(token)


@pytest.fixture
def world(admin: Http) -> World:
    return World(admin)


@pytest.mark.parametrize("visibility", ["shared", "private"])
def test_read_scope_reads_values_in_scope_only(world: World, visibility: str) -> None:
    """read: values of in-scope secrets; out of scope 404; no listing, no writes."""
    token = world.scoped("read")
    status, body = token("GET", f"{SECRETS}/{world.ids['in_' + visibility]}")
    assert (status, body["values"]) == (200, {"k": f"value-of-in_{visibility}"})
    status, body = token("GET", f"{SECRETS}/{world.ids['out_' + visibility]}")
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert names_listed(token) == set()
    status, _ = token("PATCH", f"{SECRETS}/{world.ids['in_' + visibility]}", {"values": {"k": "x"}})
    assert status == 404
    status, _ = token("GET", f"{SECRETS}/{world.ids['in_' + visibility]}/history")
    assert status == 404


@pytest.mark.parametrize("visibility", ["shared", "private"])
def test_list_scope_lists_in_scope_metadata_only(world: World, visibility: str) -> None:
    """list: in-scope secrets in lists and history; no values, nothing out of scope."""
    token = world.scoped("list")
    listed = names_listed(token)
    assert listed == {f"{world.prefix}-shared", f"{world.prefix}-private"}
    assert names_listed(token, private=str(visibility == "private").lower()) == {
        f"{world.prefix}-{visibility}"
    }
    assert token("GET", f"{SECRETS}/{world.ids['in_' + visibility]}/history")[0] == 200
    assert token("GET", f"{SECRETS}/{world.ids['out_' + visibility]}/history")[0] == 404
    assert token("GET", f"{SECRETS}/{world.ids['in_' + visibility]}")[0] == 404


def test_list_scope_pages_through_only_what_is_in_scope(world: World) -> None:
    """A page of a scoped listing is full of in-scope names (filtered in SQL, not after)."""
    for n in range(3):
        world.own.create(f"{world.prefix}-page{n}", {"k": "v"})
        world.own.create(unique(f"aaa{n}-"), {"k": "v"})
    token = world.scoped("list")
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": "2", "name_prefix": ""}
        if cursor:
            params["cursor"] = cursor
        status, body = token("GET", SECRETS, params=params)
        assert status == 200
        seen += [item["name"] for item in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert all(name.startswith(world.prefix) for name in seen)
    assert len(seen) == 5


@pytest.mark.parametrize("visibility", ["shared", "private"])
def test_write_scope_changes_in_scope_only(world: World, visibility: str) -> None:
    """write: change and delete in scope (no values in the answer); out of scope 404."""
    token = world.scoped("write")
    status, body = token(
        "PATCH", f"{SECRETS}/{world.ids['in_' + visibility]}", {"values": {"new": "n"}}
    )
    assert status == 200, body
    assert body["version"] == 2
    assert "values" not in body  # a write-only token must not see the merged keys
    status, _ = token(
        "PATCH", f"{SECRETS}/{world.ids['out_' + visibility]}", {"values": {"new": "n"}}
    )
    assert status == 404
    assert token("GET", f"{SECRETS}/{world.ids['in_' + visibility]}")[0] == 404
    assert token("DELETE", f"{SECRETS}/{world.ids['out_' + visibility]}")[0] == 404
    assert token("DELETE", f"{SECRETS}/{world.ids['in_' + visibility]}")[0] == 204


def test_write_scope_creates_and_renames_within_scope_only(world: World) -> None:
    """Creating or renaming to a name outside the scope is refused (403), inside it works."""
    token = world.scoped("write", "read")
    status, body = token("POST", SECRETS, {"name": f"{world.prefix}-new", "values": {"k": "v"}})
    assert status == 201, body
    status, body = token("POST", SECRETS, {"name": unique("elsewhere"), "values": {"k": "v"}})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    secret_id = world.ids["in_shared"]
    status, _ = token("PATCH", f"{SECRETS}/{secret_id}", {"name": unique("out-of-scope")})
    assert status == 403
    status, body = token("PATCH", f"{SECRETS}/{secret_id}", {"name": f"{world.prefix}-renamed"})
    assert (status, body["name"]) == (200, f"{world.prefix}-renamed")


def test_scoped_token_is_refused_admin_and_account_routes(admin: Http) -> None:
    """Even an admin's scoped token gets 403 on /admin and on users and tokens."""
    token = admin.as_token(
        admin.make_token(unique("scoped-admin"), scopes=[{"names": ["*"], "actions": ["read"]}])
    )
    for method, path, body in (
        ("GET", "/admin/v1/status", None),
        ("POST", "/admin/v1/dead-letters/retry", None),
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"name": unique("u"), "role": "reader"}),
        ("GET", "/api/v1/tokens", None),
        ("POST", "/api/v1/tokens", {"name": "more"}),
        ("DELETE", f"/api/v1/tokens/{uuid.uuid4()}", None),
    ):
        status, answer = token(method, path, body)
        assert (status, answer["error"]["code"]) == (403, "forbidden"), (method, path)


def test_token_json_carries_scopes_and_created_by(world: World) -> None:
    """A token in JSON has scopes (null when unscoped) and created_by."""
    world.scoped("read", "list")
    status, body = world.own("GET", "/api/v1/tokens")
    assert status == 200
    by_scopes = {json.dumps(t["scopes"]): t for t in body["items"]}
    scoped = by_scopes[json.dumps([{"names": [f"{world.prefix}*"], "actions": ["read", "list"]}])]
    assert scoped["created_by"] == world.user
    assert by_scopes["null"]["created_by"] in (world.user, "admin")


@pytest.mark.parametrize(
    "scopes",
    [
        [],
        [{"names": ["a[b]"], "actions": ["read"]}],
        [{"names": ["app-*"], "actions": ["delete"]}],
        [{"names": [], "actions": ["read"]}],
        [{"names": ["app-*"]}],
        "read:app-*",
    ],
)
def test_invalid_scopes_are_422(admin: Http, scopes: Any) -> None:
    """Malformed scopes are refused with 422 and no token is made."""
    status, body = admin("POST", "/api/v1/tokens", {"name": "bad-scope", "scopes": scopes})
    assert (status, body["error"]["code"]) == (422, "invalid_field")


# -- users ---------------------------------------------------------------------------


def test_disabled_user_tokens_fail_at_once_and_work_again_when_enabled(admin: Http) -> None:
    """PATCH disabled=true: the next request with the user's token is 401, on this replica."""
    name = unique("rita")
    user_id, token = admin.user(name, "reader")
    rita = admin.as_token(token)
    assert rita("GET", SECRETS)[0] == 200  # cached as valid now
    status, body = admin("PATCH", f"/api/v1/users/{user_id}", {"disabled": True})
    assert (status, body["disabled"]) == (200, True)
    assert rita("GET", SECRETS)[0] == 401
    assert admin.ok("PATCH", f"/api/v1/users/{user_id}", {"disabled": False})["disabled"] is False
    assert rita("GET", SECRETS)[0] == 200


def test_role_change_takes_effect_at_once(admin: Http) -> None:
    """PATCH role: a reader made writer can write on its next request."""
    name = unique("promo")
    user_id, token = admin.user(name, "reader")
    user = admin.as_token(token)
    assert user("POST", SECRETS, {"name": unique("p"), "values": {"k": "v"}})[0] == 403
    assert admin.ok("PATCH", f"/api/v1/users/{user_id}", {"role": "writer"})["role"] == "writer"
    assert user("POST", SECRETS, {"name": unique("p"), "values": {"k": "v"}})[0] == 201


def test_delete_user_refused_while_it_owns_private_secrets(admin: Http) -> None:
    """409 user_owns_secrets; after the private secret goes, 204, its tokens fail and its
    shared secrets pass to admin."""
    name = unique("leaver")
    user_id, token = admin.user(name, "writer")
    user = admin.as_token(token)
    private = user.create(unique("mine"), {"k": "v"}, private=True)
    shared = user.create(unique("ours"), {"k": "v"})
    status, body = admin("DELETE", f"/api/v1/users/{user_id}")
    assert (status, body["error"]["code"]) == (409, "user_owns_secrets")
    assert user("DELETE", f"{SECRETS}/{private['id']}")[0] == 204
    assert admin("DELETE", f"/api/v1/users/{user_id}")[0] == 204
    assert user("GET", SECRETS)[0] == 401
    assert name not in {u["name"] for u in admin.ok("GET", "/api/v1/users")["items"]}
    kept = admin.ok("GET", f"{SECRETS}/{shared['id']}")
    admin_id = next(
        u["id"] for u in admin.ok("GET", "/api/v1/users")["items"] if u["name"] == "admin"
    )
    assert kept["owner"] == admin_id


def test_builtin_admin_cannot_be_deleted_disabled_or_demoted(admin: Http) -> None:
    """409 builtin_user for each, and the admin token still works."""
    admin_id = next(
        u["id"] for u in admin.ok("GET", "/api/v1/users")["items"] if u["name"] == "admin"
    )
    for method, body in (
        ("DELETE", None),
        ("PATCH", {"disabled": True}),
        ("PATCH", {"role": "reader"}),
    ):
        status, answer = admin(method, f"/api/v1/users/{admin_id}", body)
        assert (status, answer["error"]["code"]) == (409, "builtin_user")
    assert admin("GET", "/api/v1/users")[0] == 200


def test_user_routes_are_admin_only(admin: Http) -> None:
    """A writer gets 403 on PATCH and DELETE of users; unknown ids are 404."""
    user_id, token = admin.user(unique("plain"), "writer")
    writer = admin.as_token(token)
    assert writer("PATCH", f"/api/v1/users/{user_id}", {"role": "admin"})[0] == 403
    assert writer("DELETE", f"/api/v1/users/{user_id}")[0] == 403
    assert admin("PATCH", f"/api/v1/users/{uuid.uuid4()}", {"role": "admin"})[0] == 404
    assert admin("DELETE", "/api/v1/users/not-a-uuid")[0] == 404
    status, body = admin("PATCH", f"/api/v1/users/{user_id}", {"role": "root"})
    assert (status, body["error"]["code"]) == (422, "invalid_field")


# -- tokens made for someone else, private history ----------------------------------------


def test_token_made_for_someone_else_never_reads_their_private_secrets(world: World) -> None:
    """An admin's token for the user: private secrets 404 and unlisted; shared ones work;
    its writes are recorded as made through the admin."""
    minted = world.admin.as_token(world.admin.make_token(unique("for-user"), user=world.user))
    assert minted("GET", f"{SECRETS}/{world.ids['in_private']}")[0] == 404
    assert minted("GET", f"{SECRETS}/{world.ids['in_private']}", params={"version": "1"})[0] == 404
    assert f"{world.prefix}-private" not in names_listed(minted)
    assert minted("PATCH", f"{SECRETS}/{world.ids['in_private']}", {"values": {"k": "x"}})[0] == 404
    shared = world.ids["in_shared"]
    assert minted("PATCH", f"{SECRETS}/{shared}", {"values": {"k": "changed"}})[0] == 200
    history = world.own.ok("GET", f"{SECRETS}/{shared}/history")["items"]
    assert [h["actor"] for h in history] == [world.user, f"{world.user} via admin"]
    listed = world.admin.ok("GET", "/api/v1/tokens")["items"]
    made = [t for t in listed if t["user"] == world.user and t["created_by"] == "admin"]
    assert made


def test_versions_written_while_private_stay_owner_only(world: World, admin: Http) -> None:
    """After a private secret is made shared, ?version=N of its private era is 404 for others."""
    secret_id = world.ids["in_private"]
    world.own.ok("PATCH", f"{SECRETS}/{secret_id}", {"values": {"k": "still-private"}})
    world.own.ok("PATCH", f"{SECRETS}/{secret_id}", {"private": False})
    world.own.ok("PATCH", f"{SECRETS}/{secret_id}", {"values": {"k": "public"}})
    _, reader_token = admin.user(unique("rita"), "reader")
    reader = admin.as_token(reader_token)
    for version in ("1", "2"):
        status, _ = reader("GET", f"{SECRETS}/{secret_id}", params={"version": version})
        assert status == 404, version
        status, _ = admin("GET", f"{SECRETS}/{secret_id}", params={"version": version})
        assert status == 404, version
    assert world.own("GET", f"{SECRETS}/{secret_id}", params={"version": "1"})[0] == 200
    status, body = reader("GET", f"{SECRETS}/{secret_id}", params={"version": "4"})
    assert (status, body["values"]) == (200, {"k": "public"})


def test_only_owner_or_admin_changes_private(world: World, admin: Http) -> None:
    """A writer cannot make someone else's shared secret private (403); the owner and an
    admin can change it."""
    _, other_token = admin.user(unique("bob"), "writer")
    bob = admin.as_token(other_token)
    secret_id = world.ids["in_shared"]
    status, body = bob("PATCH", f"{SECRETS}/{secret_id}", {"private": True})
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = bob(
        "PUT",
        f"{SECRETS}/{secret_id}",
        {"name": f"{world.prefix}-shared", "values": {"k": "b"}, "private": True},
    )
    assert status == 403
    assert bob("PATCH", f"{SECRETS}/{secret_id}", {"values": {"k": "bob"}})[0] == 200
    assert admin("PATCH", f"{SECRETS}/{secret_id}", {"private": False})[0] == 200  # unchanged
    assert world.own("PATCH", f"{SECRETS}/{secret_id}", {"private": True})[0] == 200
    assert world.own("PATCH", f"{SECRETS}/{secret_id}", {"private": False})[0] == 200
    assert admin("PATCH", f"{SECRETS}/{world.ids['out_shared']}", {"private": True})[0] == 200


# -- the CLI -------------------------------------------------------------------------


def test_cli_user_lifecycle_and_scoped_token(daemon: DaemonProcess, admin: Http) -> None:
    """`user list|update|delete` and `token create --scope` work end to end."""
    name = unique("cli")
    made = cli(daemon.url, ADMIN_TOKEN, "user", "create", name, "--role", "reader")
    assert made.returncode == 0, made.stderr
    out = cli(daemon.url, ADMIN_TOKEN, "user", "update", name, "--role", "writer", "--disable")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"updated user {name} (writer, disabled)"
    listed = json.loads(cli(daemon.url, ADMIN_TOKEN, "user", "list", "-o", "json").stdout)
    assert {"name": name, "role": "writer", "disabled": True}.items() <= next(
        u for u in listed if u["name"] == name
    ).items()
    assert cli(daemon.url, ADMIN_TOKEN, "user", "update", name, "--enable").returncode == 0

    prefix = unique("ci")
    admin.create(f"{prefix}-deploy", {"k": "v"})
    admin.create(unique("other"), {"k": "v"})
    made = cli(
        daemon.url,
        ADMIN_TOKEN,
        "token",
        "create",
        "--user",
        name,
        "--name",
        "ci",
        "--scope",
        f"read,list:{prefix}-*",
        "--scope",
        f"write:{prefix}-w*",
        "-o",
        "json",
    )
    assert made.returncode == 0, made.stderr
    token = json.loads(made.stdout)
    assert token["scopes"] == [
        {"names": [f"{prefix}-*"], "actions": ["read", "list"]},
        {"names": [f"{prefix}-w*"], "actions": ["write"]},
    ]
    got = cli(daemon.url, token["token"], "secret", "get", f"{prefix}-deploy", "-o", "json")
    assert got.returncode == 0, got.stderr
    listed_names = [
        s["name"]
        for s in json.loads(cli(daemon.url, token["token"], "secret", "list", "-o", "json").stdout)
    ]
    assert listed_names == [f"{prefix}-deploy"]
    bad = cli(daemon.url, ADMIN_TOKEN, "token", "create", "--name", "x", "--scope", "delete:x")
    assert bad.returncode == 2
    assert "unknown action" in bad.stderr

    gone = cli(daemon.url, ADMIN_TOKEN, "user", "delete", name, "-y")
    assert gone.returncode == 0, gone.stderr
    assert cli(daemon.url, token["token"], "secret", "list").returncode == 1


def test_cli_token_list_shows_scopes(daemon: DaemonProcess, admin: Http) -> None:
    """`token list` shows who made each token and its scopes."""
    admin.make_token(unique("listed"), scopes=[{"names": ["x-*"], "actions": ["read"]}])
    out = cli(daemon.url, ADMIN_TOKEN, "token", "list")
    assert out.returncode == 0, out.stderr
    assert "read:x-*" in out.stdout
    assert "CREATED BY" in out.stdout


def test_cli_get_by_name_with_a_read_only_scope(daemon: DaemonProcess, admin: Http) -> None:
    """A token scoped to `read` alone (no `list`) reads its secret by name with the CLI."""
    prefix = unique("ro")
    admin.create(f"{prefix}-db", {"password": "pw"})
    admin.create(unique("hidden"), {"password": "no"})
    token = admin.make_token(unique("ci"), scopes=[{"names": [f"{prefix}-*"], "actions": ["read"]}])
    got = cli(daemon.url, token, "secret", "get", f"{prefix}-db", "--key", "password")
    assert (got.returncode, got.stdout.strip()) == (0, "pw"), got.stderr
    missing = cli(daemon.url, token, "secret", "get", unique("hidden"))
    assert missing.returncode == 1
    assert "no secret named" in missing.stderr


class _HeldQuery:
    """A token lookup that waits until released, counting how often it ran."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> tuple[Principal, None]:
        self.runs += 1
        await self.release.wait()
        return Principal(str(uuid.uuid4()), "held", "reader"), None


async def test_concurrent_misses_for_one_token_share_one_query() -> None:
    """50 requests missing the cache at once for the same token run one query; the
    answer is cached for the next one."""
    cache, query = TokenCache(), _HeldQuery()
    waiting = [asyncio.create_task(cache.lookup(b"t" * 32, query)) for _ in range(50)]
    await asyncio.sleep(0)
    query.release.set()
    found = await asyncio.gather(*waiting)
    assert query.runs == 1
    assert len({id(p) for p in found}) == 1
    assert await cache.lookup(b"t" * 32, query) is found[0]
    assert query.runs == 1


async def test_a_clear_during_a_lookup_keeps_its_answer_out_of_the_cache() -> None:
    """A revocation here while a lookup is in flight: that answer is not cached, and a
    request after the revocation runs a query of its own."""
    cache, query = TokenCache(), _HeldQuery()
    first = asyncio.create_task(cache.lookup(b"t" * 32, query))
    await asyncio.sleep(0)
    cache.clear()
    second = asyncio.create_task(cache.lookup(b"t" * 32, query))
    for _ in range(10):  # a few turns of the loop: both queries start, nothing else runs
        await asyncio.sleep(0)
    assert query.runs == 2
    query.release.set()
    await asyncio.gather(first, second)
    assert cache.get(b"t" * 32) is not None  # the second one's answer, after the clear
    cache.clear()
    assert cache.get(b"t" * 32) is None


async def test_disabling_reaches_another_replica_within_its_token_cache(
    runtime: Runtime,
) -> None:
    """Another process (its own token cache) refuses a disabled user's token once its
    cache entry (1 s) lapses; the process that disabled the user refuses it at once."""
    other = replace(runtime, tokens=TokenCache())
    async with (
        TestClient(TestServer(make_app(runtime))) as one_client,
        TestClient(TestServer(make_app(other))) as two_client,
    ):
        one, two = Api(one_client), Api(two_client)
        token = await one.make_user("replica-user", "reader")
        users = (await one.request("GET", "/api/v1/users"))[1]["items"]
        user_id = next(u["id"] for u in users if u["name"] == "replica-user")
        assert (await two.as_token(token).request("GET", SECRETS))[0] == 200  # now cached
        await one.request("PATCH", f"/api/v1/users/{user_id}", json={"disabled": True})
        assert (await one.as_token(token).request("GET", SECRETS))[0] == 401
        deadline = time.monotonic() + 30
        status = 200
        while status != 401 and time.monotonic() < deadline:
            status = (await two.as_token(token).request("GET", SECRETS))[0]
            await asyncio.sleep(0.05)
        assert status == 401


def test_change_feed_leaves_out_what_the_scope_does_not_list(world: World) -> None:
    """GET /api/v1/events with a list-scoped token: events of in-scope secrets only; a
    token without list sees none."""
    token = world.scoped("list")
    reader = world.scoped("read")
    start = token.ok("GET", "/api/v1/events", params={"wait": "0"})["last_seq"]
    world.own.ok("PATCH", f"{SECRETS}/{world.ids['out_shared']}", {"values": {"k": "x"}})
    world.own.ok("PATCH", f"{SECRETS}/{world.ids['in_shared']}", {"values": {"k": "y"}})
    seen: list[dict[str, Any]] = []
    position = [start]

    def in_scope_seen() -> bool:
        body = token.ok("GET", "/api/v1/events", params={"after": str(position[0]), "wait": "1"})
        seen.extend(body["events"])
        position[0] = body["last_seq"]
        return any(e["secret_id"] == world.ids["in_shared"] for e in seen)

    poll(in_scope_seen, 60, "the in-scope event in the feed")
    assert {e["secret_id"] for e in seen} == {world.ids["in_shared"]}
    body = reader.ok("GET", "/api/v1/events", params={"after": str(start), "wait": "0"})
    assert body["events"] == []
