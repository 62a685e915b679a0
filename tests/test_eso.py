"""The External Secrets Operator setup in the README works against the real by-name route.

The SecretStore is read from the README itself; its ``url`` and ``result.jsonPath``
templates are rendered as the operator renders them for an ExternalSecret's
``remoteRef`` and the JSONPath (jsonpath-ng) is evaluated on the server's answer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from jsonpath_ng import parse

from tests.conftest import Api

README = Path(__file__).resolve().parents[1] / "README.md"


def eso_manifests() -> dict[str, Any]:
    """The YAML documents of the README's ESO example, by kind."""
    text = README.read_text()
    section = text[text.index("### Kubernetes: the External Secrets Operator") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    return {doc["kind"]: doc for doc in yaml.safe_load_all(block.group(1))}


def render(template: str, key: str, prop: str) -> str:
    """The operator's template rendering, for the two fields the example uses."""
    return template.replace("{{ .remoteRef.key }}", key).replace("{{ .remoteRef.property }}", prop)


async def fetch_as_eso(api: Api, key: str, prop: str, json_path: str | None = None) -> list[Any]:
    webhook = eso_manifests()["SecretStore"]["spec"]["provider"]["webhook"]
    url = render(webhook["url"], key, prop)
    path = url[url.index("/api/v1/") :]
    status, body, _ = await api.request("GET", path)
    assert status == 200, body
    expression = render(json_path or webhook["result"]["jsonPath"], key, prop)
    return [match.value for match in parse(expression).find(body)]


async def test_readme_jsonpath_picks_the_key(api: Api) -> None:
    """$.values.{{ .remoteRef.property }} on the by-name answer is the key's value."""
    await api.create("db", {"password": "s3cret", "user": "app"})
    assert await fetch_as_eso(api, "db", "password") == ["s3cret"]
    assert await fetch_as_eso(api, "db", "user") == ["app"]


async def test_readme_bracket_form_reads_a_dotted_key(api: Api) -> None:
    """The README's bracket form reads a key with a dot in it as one key."""
    await api.create("app", {"db.user": "app", "db": "not-this"})
    bracket = "$.values['{{ .remoteRef.property }}']"
    assert await fetch_as_eso(api, "app", "db.user", bracket) == ["app"]


def test_readme_token_secret_is_labelled_for_the_webhook() -> None:
    """The token Secret carries the label the webhook provider requires, and is referenced."""
    manifests = eso_manifests()
    secret = manifests["Secret"]
    webhook = manifests["SecretStore"]["spec"]["provider"]["webhook"]
    assert secret["metadata"]["labels"] == {"external-secrets.io/type": "webhook"}
    assert webhook["secrets"][0]["secretRef"]["name"] == secret["metadata"]["name"]
    assert webhook["headers"]["Authorization"] == "Bearer {{ print .auth.token }}"
    assert "token" in secret["stringData"]
    external = manifests["ExternalSecret"]["spec"]
    assert external["secretStoreRef"]["name"] == manifests["SecretStore"]["metadata"]["name"]
