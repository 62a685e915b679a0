"""The OpenAPI 3 document served at ``/api/v1/openapi.json``.

Kept beside the handlers and checked by ``tests/test_fuzz.py`` (schemathesis):
every response the server gives must match it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from secretmirror.audit import ACTIONS, OUTCOMES
from secretmirror.reconcile import CLASSES

_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$"}
_TS = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    texts = {
        400: "Malformed request",
        401: "Missing or invalid token",
        403: "Role not allowed",
        404: "Not found",
        409: "Conflict",
        410: "Version no longer kept",
        412: "If-Match is stale",
        413: "Too large",
        429: "Too many failed authentications from this address (see Retry-After)",
        422: "Invalid field",
        503: "A dependency is unavailable",
    }
    return {str(c): {"description": texts[c], **_json(_ref("Error"))} for c in codes}


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": 'The version the write expects, quoted as in the ETag header ("3"); '
    "a bare number is accepted too",
    "schema": {"type": "string", "pattern": '^("[0-9]{1,9}"|[0-9]{1,9})$'},
}
_SECRET_HEADERS = {
    "X-Secret-Source": {"schema": {"type": "string", "enum": ["primary", "backup", "log"]}},
    "ETag": {"schema": {"type": "string"}},
}


def _secret_response(description: str) -> dict[str, Any]:
    return {"description": description, "headers": _SECRET_HEADERS, **_json(_ref("Secret"))}


def _written_response(description: str) -> dict[str, Any]:
    """After a change: the values only when the token may also read the secret."""
    return {
        "description": description + " (values only when the token's scopes allow read)",
        "headers": _SECRET_HEADERS,
        **_json(_ref("SecretWritten")),
    }


_ACTIONS = {"type": "string", "enum": ["read", "list", "write"]}
_SCOPES = {
    "type": ["array", "null"],
    "minItems": 1,
    "maxItems": 50,
    "items": {
        "type": "object",
        "required": ["names", "actions"],
        "additionalProperties": False,
        "properties": {
            "names": {
                "type": "array",
                "minItems": 1,
                "maxItems": 100,
                "items": {"type": "string", "pattern": "^[A-Za-z0-9_.*?-]{1,255}$"},
            },
            "actions": {"type": "array", "minItems": 1, "items": _ACTIONS},
        },
    },
}


@cache
def openapi_document(stores: tuple[str, ...] = ()) -> dict[str, Any]:
    """The document; ``stores``: the configured store names a reconcile job may name."""
    common = (400, 401, 429, 503)
    values_in = {
        "type": "object",
        "minProperties": 1,
        "additionalProperties": {"type": "string"},
        "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,255}$"},
    }
    patch_values = {
        "type": "object",
        "additionalProperties": {"type": ["string", "null"]},
        "propertyNames": {"pattern": "^[A-Za-z0-9_.-]{1,255}$"},
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                }
            },
        },
        "SecretMeta": {
            "type": "object",
            "required": ["id", "name", "private", "owner", "version", "created", "updated"],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "name": _NAME,
                "private": {"type": "boolean"},
                "owner": {"type": "string"},
                "version": {"type": "integer", "minimum": 1},
                "created": _TS,
                "updated": _TS,
            },
        },
        "SecretWritten": {
            "allOf": [
                _ref("SecretMeta"),
                {
                    "type": "object",
                    "properties": {
                        "values": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
            ],
        },
        "Secret": {
            "allOf": [
                _ref("SecretMeta"),
                {
                    "type": "object",
                    "required": ["values"],
                    "properties": {
                        "values": {"type": "object", "additionalProperties": {"type": "string"}}
                    },
                },
            ],
        },
        "SecretList": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("SecretMeta")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "SecretPage": {
            "type": "object",
            "required": ["items", "next_cursor"],
            "properties": {
                "items": {"type": "array", "items": _ref("Secret")},
                "next_cursor": {"type": ["string", "null"]},
            },
        },
        "FeedEvent": {
            "type": "object",
            "required": ["seq", "secret_id", "name", "version", "kind", "recorded_at"],
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "secret_id": {"type": "string", "format": "uuid"},
                "name": _NAME,
                "version": {"type": "integer", "minimum": 1},
                "kind": {"type": "string", "enum": ["create", "update", "rename", "delete"]},
                "recorded_at": _TS,
            },
        },
        "Feed": {
            "type": "object",
            "required": ["events", "last_seq"],
            "properties": {
                "events": {"type": "array", "items": _ref("FeedEvent")},
                "last_seq": {"type": "integer", "minimum": 0},
            },
        },
        "Event": {
            "type": "object",
            "required": ["version", "kind", "actor", "recorded_at"],
            "properties": {
                "version": {"type": "integer"},
                "kind": {"type": "string", "enum": ["create", "update", "rename", "delete"]},
                "actor": {"type": "string"},
                "recorded_at": _TS,
            },
        },
        "User": {
            "type": "object",
            "required": ["id", "name", "role", "created", "disabled"],
            "properties": {
                "id": {"type": "string"},
                "name": _NAME,
                "role": {"type": "string", "enum": ["admin", "writer", "reader"]},
                "created": _TS,
                "disabled": {"type": "boolean"},
            },
        },
        "Token": {
            "type": "object",
            "required": ["id", "name", "user", "created", "expires", "scopes", "created_by"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "user": {"type": "string"},
                "created": _TS,
                "expires": {"type": ["string", "null"], "format": "date-time"},
                "scopes": _SCOPES,
                "created_by": {"type": ["string", "null"]},
                "token": {"type": "string"},
            },
        },
        "CreateSecret": {
            "type": "object",
            "required": ["name", "values"],
            "additionalProperties": False,
            "properties": {"name": _NAME, "values": values_in, "private": {"type": "boolean"}},
        },
        "PatchSecret": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"name": _NAME, "values": patch_values, "private": {"type": "boolean"}},
        },
        "PutSecret": {
            "type": "object",
            "required": ["name", "values"],
            "additionalProperties": False,
            "properties": {"name": _NAME, "values": values_in, "private": {"type": "boolean"}},
        },
    }
    secret_item = {
        "get": {
            "summary": "Read a secret with its values",
            "parameters": [
                _ID_PARAM,
                {
                    "name": "version",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                },
            ],
            "responses": {"200": _secret_response("The secret"), **_errors(*common, 404, 410)},
        },
        "patch": {
            "summary": "Merge changes; a key set to null is removed",
            "parameters": [_ID_PARAM, _IF_MATCH],
            "requestBody": {"required": True, **_json(_ref("PatchSecret"))},
            "responses": {
                "200": _written_response("The changed secret"),
                **_errors(*common, 403, 404, 409, 412, 413, 422),
            },
        },
        "put": {
            "summary": "Replace the name and all values",
            "parameters": [_ID_PARAM, _IF_MATCH],
            "requestBody": {"required": True, **_json(_ref("PutSecret"))},
            "responses": {
                "200": _written_response("The replaced secret"),
                **_errors(*common, 403, 404, 409, 412, 413, 422),
            },
        },
        "delete": {
            "summary": "Delete a secret",
            "parameters": [_ID_PARAM, _IF_MATCH],
            "responses": {"204": {"description": "Deleted"}, **_errors(*common, 403, 404, 412)},
        },
    }
    paths: dict[str, Any] = {
        "/api/v1/secrets": {
            "post": {
                "summary": "Create a secret",
                "requestBody": {"required": True, **_json(_ref("CreateSecret"))},
                "responses": {
                    "201": _secret_response("Created"),
                    **_errors(*common, 403, 409, 413, 422),
                },
            },
            "get": {
                "summary": "List secrets (metadata only)",
                "parameters": [
                    {"name": "name", "in": "query", "schema": {"type": "string"}},
                    {"name": "name_prefix", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "private",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "description": "The previous page's next_cursor; anything else is 400",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "values",
                        "in": "query",
                        "description": "true: each item carries its values (a bulk read; "
                        "503 when any of them cannot be served)",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "A page: SecretMeta items, Secret items with values=true",
                        **_json({"anyOf": [_ref("SecretList"), _ref("SecretPage")]}),
                    },
                    **_errors(*common),
                },
            },
        },
        "/api/v1/secrets/by-name/{name}": {
            "get": {
                "summary": "Read a secret by name with its values (for tools such as ESO)",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": _NAME},
                    {
                        "name": "private",
                        "in": "query",
                        "description": "Pick your private (true) or the shared (false) secret "
                        "when you can see both; without it that is 409 ambiguous_name",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {"200": _secret_response("The secret"), **_errors(*common, 404, 409)},
            },
        },
        "/api/v1/secrets/by-name/{name}/history": {
            "get": {
                "summary": "The history of the secret called name (never values); "
                "deleted=true: of the last deleted secret of that name",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": _NAME},
                    {
                        "name": "private",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                    {
                        "name": "deleted",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["true", "false"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "Events",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Event")}},
                            }
                        ),
                    },
                    **_errors(*common, 404, 409),
                },
            },
        },
        "/api/v1/events": {
            "get": {
                "summary": "The change feed in commit order, long-polled (never values)",
                "parameters": [
                    {
                        "name": "after",
                        "in": "query",
                        "description": "A seq from this feed (last_seq); 0 from the beginning; "
                        "omitted: from now",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                    },
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "Seconds to wait for an event when there is none yet",
                        "schema": {"type": "number", "minimum": 0, "maximum": 60},
                    },
                    {"name": "name_prefix", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": {
                        "description": "The events after `after` that you may list, at most "
                        "500, and the position to pass as `after` next",
                        **_json(_ref("Feed")),
                    },
                    **_errors(*common),
                },
            },
        },
        "/api/v1/secrets/{id}": secret_item,
        "/api/v1/secrets/{id}/history": {
            "get": {
                "summary": "The secret's events (never values)",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": {
                        "description": "Events",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Event")}},
                            }
                        ),
                    },
                    **_errors(*common, 404),
                },
            },
        },
        "/api/v1/users": {
            "post": {
                "summary": "Create a user (admin)",
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["name", "role"],
                            "additionalProperties": False,
                            "properties": {
                                "name": _NAME,
                                "role": {"type": "string", "enum": ["admin", "writer", "reader"]},
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {"description": "Created", **_json(_ref("User"))},
                    **_errors(*common, 403, 409, 422),
                },
            },
            "get": {
                "summary": "List users (admin)",
                "responses": {
                    "200": {
                        "description": "Users",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("User")}},
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
        "/api/v1/users/{id}": {
            "patch": {
                "summary": "Change a user's role or disable it (admin)",
                "parameters": [_ID_PARAM],
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "role": {"type": "string", "enum": ["admin", "writer", "reader"]},
                                "disabled": {"type": "boolean"},
                            },
                        }
                    ),
                },
                "responses": {
                    "200": {"description": "The changed user", **_json(_ref("User"))},
                    **_errors(*common, 403, 404, 409, 422),
                },
            },
            "delete": {
                "summary": "Delete a user and its tokens (admin); 409 while it owns private "
                "secrets",
                "parameters": [_ID_PARAM],
                "responses": {
                    "204": {"description": "Deleted"},
                    **_errors(*common, 403, 404, 409),
                },
            },
        },
        "/api/v1/tokens": {
            "post": {
                "summary": "Create a token; its secret string is shown once",
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {
                                "user": _NAME,
                                "name": _NAME,
                                "expires_in_s": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "maximum": 315360000,
                                },
                                "scopes": _SCOPES,
                            },
                        }
                    ),
                },
                "responses": {
                    "201": {"description": "Created", **_json(_ref("Token"))},
                    **_errors(*common, 403, 404, 422),
                },
            },
            "get": {
                "summary": "List tokens (your own; an admin sees all)",
                "responses": {
                    "200": {
                        "description": "Tokens",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Token")}},
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
        "/api/v1/tokens/{id}": {
            "delete": {
                "summary": "Revoke a token",
                "parameters": [_ID_PARAM],
                "responses": {"204": {"description": "Revoked"}, **_errors(*common, 403, 404)},
            },
        },
    }
    schemas.update(_admin_schemas())
    paths.update(_admin_paths(common, stores))
    paths.update(_health_paths())
    schemas.update(_audit_schemas())
    paths.update(_audit_paths(common))
    return {
        "openapi": "3.1.0",
        "info": {"title": "secretmirror", "version": "1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


_NULLABLE_TS = {"type": ["string", "null"], "format": "date-time"}


def _admin_schemas() -> dict[str, Any]:
    counts = {"type": "integer", "minimum": 0}
    return {
        "Job": {
            "type": "object",
            "required": [
                "id",
                "mode",
                "status",
                "dry_run",
                "delete_secrets",
                "stores",
                "created",
                "started",
                "finished",
                "counts",
                "samples",
                "failures",
                "error",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "mode": {
                    "type": "string",
                    "enum": ["verify", "repair", "backup", "restore", "rekey"],
                },
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
                },
                "dry_run": {"type": "boolean"},
                "delete_secrets": {"type": "boolean"},
                "stores": {
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "The stores a verify or repair covers (null: every store)",
                },
                "created": _TS,
                "started": _NULLABLE_TS,
                "finished": _NULLABLE_TS,
                "counts": {
                    "type": "object",
                    "description": (
                        "stores: per store, the classes verify and repair found (before "
                        "repairing); unreadable = the entry's ciphertext does not decrypt"
                    ),
                    "properties": {
                        **dict.fromkeys(
                            ("total", "scanned", "copied", "skipped", "deleted", "failed"), counts
                        ),
                        "stores": {
                            "type": "object",
                            "additionalProperties": {
                                "type": "object",
                                "properties": dict.fromkeys(CLASSES, counts),
                            },
                        },
                    },
                },
                "samples": {"type": "object"},
                "sample_names": {
                    "type": "object",
                    "description": "GET /admin/v1/jobs/{id} only: the names of the sample "
                    "secrets you may see, per store and class",
                },
                "failures": {"type": "array", "items": {"type": "object"}},
                "error": {"type": ["string", "null"]},
            },
        },
        "KeyInventory": _key_inventory_schema(),
        "Status": {
            "type": "object",
            "required": ["deployment_id", "stores", "replication", "last_verify"],
            "properties": {
                "deployment_id": {"type": "string"},
                "stores": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["type", "location", "up", "last_error"],
                        "properties": {
                            "type": {"type": "string"},
                            "location": {"type": "string"},
                            "up": {"type": "boolean"},
                            "last_error": {"type": ["string", "null"]},
                            "mirror": {
                                "type": "object",
                                "description": "A mirror's rule (mirrors only).",
                                "properties": {
                                    "include": {"type": "array", "items": {"type": "string"}},
                                    "exclude": {"type": "array", "items": {"type": "string"}},
                                    "include_private": {"type": "boolean"},
                                    "naming": {"enum": ["id", "name"]},
                                    "on_delete": {"enum": ["delete", "retain"]},
                                },
                            },
                        },
                    },
                },
                "replication": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "required": [
                            "pending",
                            "dead",
                            "oldest_pending_age_s",
                            "applied",
                            "dead_reasons",
                        ],
                        "properties": {
                            "pending": counts,
                            "dead": counts,
                            "oldest_pending_age_s": {"type": "number", "minimum": 0},
                            "applied": counts,
                            "dead_reasons": {
                                "type": "object",
                                "description": "Dead deliveries by the reason of their last "
                                "error, e.g. foreign_entry.",
                                "additionalProperties": counts,
                            },
                        },
                    },
                },
                "last_verify": {"type": ["object", "null"]},
            },
        },
    }


def _key_inventory_schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    stored_in = {"type": "object", "additionalProperties": count}
    key_id = {"type": "string", "pattern": "^[0-9a-f]{16}$"}
    return {
        "type": "object",
        "required": ["keys", "unknown"],
        "properties": {
            "keys": {
                "type": "array",
                "description": "The configured keys in order; position 0 encrypts",
                "items": {
                    "type": "object",
                    "required": ["id", "position", "ciphertexts"],
                    "properties": {
                        "id": key_id,
                        "position": count,
                        "ciphertexts": count,
                        "stored_in": stored_in,
                    },
                },
            },
            "unknown": {
                "type": "array",
                "description": "Keys that seal stored ciphertexts but are not configured",
                "items": {
                    "type": "object",
                    "required": ["id", "ciphertexts"],
                    "properties": {"id": key_id, "ciphertexts": count, "stored_in": stored_in},
                },
            },
        },
    }


def _admin_paths(common: tuple[int, ...], stores: tuple[str, ...]) -> dict[str, Any]:
    job = {"description": "The job", **_json(_ref("Job"))}
    return {
        "/admin/v1/reconcile": {
            "post": {
                "summary": "Start a reconcile job (admin)",
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["mode"],
                            "additionalProperties": False,
                            "properties": {
                                "mode": {
                                    "type": "string",
                                    "enum": ["verify", "repair", "backup", "restore"],
                                },
                                "delete_secrets": {"type": "boolean"},
                                "dry_run": {"type": "boolean"},
                                "stores": {
                                    "type": "array",
                                    "minItems": 1,
                                    **({"maxItems": len(stores)} if stores else {}),
                                    "items": {"type": "string", "enum": list(stores)}
                                    if stores
                                    else {"type": "string"},
                                    "description": "verify and repair: the stores to cover "
                                    "(primary, backup, mirror names); default every store",
                                },
                            },
                            "allOf": [
                                {  # delete_secrets applies to backup and restore only
                                    "if": {
                                        "required": ["delete_secrets"],
                                        "properties": {"delete_secrets": {"const": True}},
                                    },
                                    "then": {
                                        "properties": {"mode": {"enum": ["backup", "restore"]}}
                                    },
                                },
                                {  # stores applies to verify and repair only
                                    "if": {"required": ["stores"]},
                                    "then": {
                                        "properties": {"mode": {"enum": ["verify", "repair"]}}
                                    },
                                },
                            ],
                        }
                    ),
                },
                "responses": {
                    "202": {"description": "Started", **_json(_ref("Job"))},
                    **_errors(*common, 403, 409, 422),
                },
            },
        },
        "/admin/v1/jobs": {
            "get": {
                "summary": "Recent jobs (admin)",
                "responses": {
                    "200": {
                        "description": "Jobs",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {"items": {"type": "array", "items": _ref("Job")}},
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
        "/admin/v1/jobs/{id}": {
            "get": {
                "summary": "One job's state and progress (admin)",
                "parameters": [_ID_PARAM],
                "responses": {"200": job, **_errors(*common, 403, 404)},
            },
        },
        "/admin/v1/jobs/{id}/cancel": {
            "post": {
                "summary": "Cancel a job (admin)",
                "parameters": [_ID_PARAM],
                "responses": {"200": job, **_errors(*common, 403, 404)},
            },
        },
        "/admin/v1/keys": {
            "get": {
                "summary": "Stored ciphertexts per encryption key, and under unknown keys (admin)",
                "responses": {
                    "200": {"description": "The key inventory", **_json(_ref("KeyInventory"))},
                    **_errors(*common, 403),
                },
            },
        },
        "/admin/v1/keys/rotate": {
            "post": {
                "summary": "Start the rekey job: re-encrypt everything under the first key (admin)",
                "responses": {
                    "202": {"description": "Started (mode rekey)", **_json(_ref("Job"))},
                    **_errors(*common, 403, 409),
                },
            },
        },
        "/admin/v1/status": {
            "get": {
                "summary": "Stores, replication per target and the last verify (admin)",
                "responses": {
                    "200": {"description": "Status", **_json(_ref("Status"))},
                    **_errors(*common, 403),
                },
            },
        },
        "/admin/v1/dead-letters": {
            "get": {
                "summary": "The dead-lettered deliveries of the configured stores (admin)",
                "responses": {
                    "200": {
                        "description": "At most 1000; name is null where you may not see it",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items"],
                                "properties": {
                                    "items": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": [
                                                "target",
                                                "secret_id",
                                                "name",
                                                "version",
                                                "attempts",
                                                "last_error",
                                            ],
                                            "properties": {
                                                "target": {"type": "string"},
                                                "secret_id": {"type": "string"},
                                                "name": {"type": ["string", "null"]},
                                                "version": {"type": "integer"},
                                                "attempts": {"type": "integer"},
                                                "last_error": {"type": ["string", "null"]},
                                            },
                                        },
                                    }
                                },
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
        "/admin/v1/dead-letters/retry": {
            "post": {
                "summary": "Requeue dead-lettered deliveries (admin)",
                "responses": {
                    "200": {
                        "description": "How many were requeued",
                        **_json(
                            {
                                "type": "object",
                                "required": ["requeued"],
                                "properties": {"requeued": {"type": "integer", "minimum": 0}},
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
    }


def _health_paths() -> dict[str, Any]:
    state = {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": {"type": "string"},
            "reasons": {"type": "array", "items": {"type": "string"}},
        },
    }
    return {
        "/healthz": {
            "get": {
                "summary": "200 while the process runs",
                "security": [],
                "responses": {"200": {"description": "Alive", **_json(state)}},
            },
        },
        "/readyz": {
            "get": {
                "summary": "200 when PostgreSQL answers and the schema is current",
                "security": [],
                "responses": {
                    "200": {"description": "Ready", **_json(state)},
                    "503": {"description": "Not ready, with reasons", **_json(state)},
                },
            },
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                },
            },
        },
    }


def _audit_schemas() -> dict[str, Any]:
    nullable = {"type": ["string", "null"]}
    return {
        "AuditRecord": {
            "type": "object",
            "required": [
                "id",
                "at",
                "actor",
                "token_id",
                "action",
                "secret_id",
                "secret_name",
                "outcome",
                "status",
                "remote_addr",
                "request_id",
            ],
            "properties": {
                "id": {"type": "integer"},
                "at": _TS,
                "actor": nullable,
                "token_id": nullable,
                "action": {"type": "string", "enum": list(ACTIONS)},
                "secret_id": nullable,
                "secret_name": nullable,
                "outcome": {"type": "string", "enum": list(OUTCOMES)},
                "status": {"type": "integer"},
                "remote_addr": nullable,
                "request_id": nullable,
            },
        },
    }


def _audit_paths(common: tuple[int, ...]) -> dict[str, Any]:
    def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    return {
        "/admin/v1/audit": {
            "get": {
                "summary": "The audit log, newest first (admin); never values or tokens",
                "parameters": [
                    query("actor", {"type": "string"}, "A user (also 'user via creator')"),
                    query("secret_id", {"type": "string", "format": "uuid"}, "A secret id"),
                    query("secret_name", {"type": "string"}, "A secret name"),
                    query("action", {"type": "string", "enum": list(ACTIONS)}, "An action"),
                    query("outcome", {"type": "string", "enum": list(OUTCOMES)}, "An outcome"),
                    query("since", {"type": "string", "format": "date-time"}, "From (ISO 8601)"),
                    query("until", {"type": "string", "format": "date-time"}, "Before (ISO 8601)"),
                    query(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": 1000},
                        "Page size (100)",
                    ),
                    query(
                        "cursor",
                        {"type": "string"},
                        "The previous page's next_cursor; anything else is 400",
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "A page of records",
                        **_json(
                            {
                                "type": "object",
                                "required": ["items", "next_cursor"],
                                "properties": {
                                    "items": {"type": "array", "items": _ref("AuditRecord")},
                                    "next_cursor": {"type": ["string", "null"]},
                                },
                            }
                        ),
                    },
                    **_errors(*common, 403),
                },
            },
        },
    }
