"""One settings object: defaults, then a TOML file, then ``SECRETMIRROR_*`` variables.

Secrets in the configuration (tokens, keys, passwords) are ``SecretStr`` so they
are never echoed by ``repr``, by a validation error or by a log line.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from secretmirror.errors import ConfigError

CONFIG_ENV = "SECRETMIRROR_CONFIG"
#: A shorter configured admin token stops start-up (a generated one is 47 characters).
MIN_ADMIN_TOKEN = 32


class _Store(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SqlStoreSettings(_Store):
    type: Literal["sql"] = "sql"
    database_url: SecretStr | None = None


class FileStoreSettings(_Store):
    type: Literal["file"] = "file"
    path: Path | None = None


class AwsStoreSettings(_Store):
    type: Literal["aws"] = "aws"
    region: str = "us-east-1"
    endpoint_url: str | None = None
    auth_method: Literal["implicit", "secret-key", "sts-token", "iam-role"] = "implicit"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    role_arn: str | None = None
    kms_key_id: str | None = None
    name_prefix: str = "secretmirror/"
    recovery_window_days: int = Field(default=7, ge=0, le=30)
    max_writes_per_s: float = Field(default=40, gt=0)

    @field_validator("name_prefix")
    @classmethod
    def _aws_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9/_+=.@-]{0,200}", v):
            raise ValueError("may hold only letters, digits and / _ + = . @ -")
        return v


class HashicorpStoreSettings(_Store):
    type: Literal["hashicorp"] = "hashicorp"
    url: str = "http://127.0.0.1:8200"
    auth_method: Literal["token", "approle"] = "token"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    mount: str = "secret"
    path_prefix: str = "secretmirror/"
    namespace: str | None = None
    ca_cert: Path | None = None


class GcpStoreSettings(_Store):
    type: Literal["gcp"] = "gcp"
    project_id: str = ""
    auth_method: Literal["implicit", "service-account"] = "implicit"
    service_account_file: Path | None = None
    endpoint_url: str | None = None
    name_prefix: str = "secretmirror-"
    max_writes_per_s: float = Field(default=8, gt=0)

    @field_validator("name_prefix")
    @classmethod
    def _gcp_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{0,200}", v):
            raise ValueError("may hold only letters, digits, _ and -")
        return v


class AzureStoreSettings(_Store):
    type: Literal["azure"] = "azure"
    vault_url: str = ""
    auth_method: Literal["implicit", "service-principal"] = "implicit"
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    name_prefix: str = "secretmirror-"
    max_writes_per_s: float = Field(default=25, gt=0)

    @field_validator("name_prefix")
    @classmethod
    def _azure_prefix(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9-]{0,80}", v):
            raise ValueError("may hold only letters, digits and -")
        return v


class CustomStoreSettings(_Store):
    type: Literal["custom"] = "custom"
    class_path: str
    options: dict[str, Any] = Field(default_factory=dict)


StoreSettings = Annotated[
    SqlStoreSettings
    | FileStoreSettings
    | AwsStoreSettings
    | HashicorpStoreSettings
    | GcpStoreSettings
    | AzureStoreSettings
    | CustomStoreSettings,
    Field(discriminator="type"),
]


#: A mirror's name (spec section 16): what status, metrics and jobs call it.
MIRROR_NAME = re.compile(r"[a-z][a-z0-9_]{0,30}")
#: The fields of a mirror that are not its store's.
_MIRROR_FIELDS = ("include", "exclude", "include_private", "naming", "on_delete")


class MirrorSettings(BaseModel):
    """A mirror: any store plus which secrets it gets and under which names.

    Configured flat (``mirrors.<name>.type``, ``.region``, ``.include``...); the
    store's own fields are split off into ``store`` before validation.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    store: StoreSettings
    #: NoDecode: from an environment variable the validator below reads the text itself.
    include: Annotated[tuple[str, ...], NoDecode] = ("*",)
    exclude: Annotated[tuple[str, ...], NoDecode] = ()
    include_private: bool = False
    naming: Literal["id", "name"] = "id"
    on_delete: Literal["delete", "retain"] = "delete"

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "store" in data:
            return data
        mirror = {k: data[k] for k in _MIRROR_FIELDS if k in data}
        mirror["store"] = {k: v for k, v in data.items() if k not in _MIRROR_FIELDS}
        return mirror

    @field_validator("include", "exclude", mode="before")
    @classmethod
    def _globs(cls, v: Any) -> Any:
        """A list, or from an environment variable a JSON list or comma-separated globs."""
        if isinstance(v, str):
            text = v.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _valid_globs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for glob in v:
            problem = glob_problem(glob)
            if problem:
                raise ValueError(f"invalid glob {glob!r}: {problem}")
        return v


def glob_problem(glob: str) -> str | None:
    """Why ``glob`` is not a usable secret-name pattern (``fnmatch`` syntax), or None."""
    if not glob or len(glob) > 255:
        return "must be 1-255 characters"
    if any(c.isspace() for c in glob):
        return "must not contain whitespace"
    depth = 0
    for c in glob:
        if c == "[":
            depth += 1
        elif c == "]" and depth:
            depth -= 1
    if depth:
        return "an unclosed ["
    return None


class ReplicationSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    concurrency: int = Field(default=16, ge=1, le=1024)
    batch_size: int = Field(default=100, ge=1, le=10_000)
    max_attempts: int = Field(default=20, ge=1)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=300, gt=0)
    poll_interval_s: float = Field(default=1, gt=0)
    #: A store call gets lease_s / 3 (at least 1 s) of the store's time and must end that
    #: long before the lease does: below 3 s a delivery would have no time left to write.
    lease_s: float = Field(default=30, ge=3)
    inline_timeout_s: float = Field(default=2, gt=0)


class ReconcileSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    verify_interval_s: float = Field(default=600, ge=0)
    auto_repair: bool = False
    concurrency: int = Field(default=16, ge=1, le=1024)


class AuthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Failed authentications one client address may make before it gets 429 ...
    failed_burst: int = Field(default=20, ge=1)
    #: ... and how fast that allowance comes back, per second.
    failed_per_s: float = Field(default=1.0, gt=0)


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Also append every record as a JSON line to this file (created 0600).
    file: Path | None = None
    keep_days: int = Field(default=365, ge=1)
    #: Off only for benchmarks and tests that measure without it.
    enabled: bool = True


class HistorySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keep_versions: int = Field(default=10, ge=1)


class AwsKmsSettings(_Store):
    """AWS KMS: data keys from GenerateDataKey under ``key_id``, unwrapped with Decrypt."""

    type: Literal["aws"] = "aws"
    key_id: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    auth_method: Literal["implicit", "secret-key", "sts-token", "iam-role"] = "implicit"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    role_arn: str | None = None


class HashicorpKmsSettings(_Store):
    """Vault/OpenBao Transit: data keys from ``datakey/plaintext``, unwrapped with ``decrypt``."""

    type: Literal["hashicorp"] = "hashicorp"
    url: str = "http://127.0.0.1:8200"
    mount: str = "transit"
    key_name: str
    auth_method: Literal["token", "approle"] = "token"
    token: SecretStr | None = None
    role_id: str | None = None
    secret_id: SecretStr | None = None
    namespace: str | None = None
    ca_cert: Path | None = None


KmsSettings = Annotated[AwsKmsSettings | HashicorpKmsSettings, Field(discriminator="type")]


class EncryptionSettings(BaseModel):
    """How stored ciphertexts are sealed and re-sealed (spec section 14)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Envelope encryption with a KMS instead of ``encryption_keys``.
    kms: KmsSettings | None = None
    #: Ciphertexts the rekey job re-encrypts per batch (one SELECT and one UPDATE).
    rekey_batch_size: int = Field(default=200, ge=1, le=10_000)
    #: Start even though stored ciphertexts use keys that are not configured (a key
    #: that is lost for good): reads of those fall back to the backup store.
    allow_unknown_keys: bool = False


def _default_data_dir() -> Path:
    return Path("~/.local/share/secretmirror").expanduser()


class Settings(BaseSettings):
    """Everything the daemon and the CLI can be configured with (spec section 3)."""

    model_config = SettingsConfigDict(
        env_prefix="SECRETMIRROR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    database_url: SecretStr | None = None
    data_dir: Path = Field(default_factory=_default_data_dir)
    listen: str = "127.0.0.1:8750"
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    encryption_keys: SecretStr | None = None
    admin_token: SecretStr | None = None
    max_secret_bytes: int = Field(default=65536, ge=64, le=1024 * 1024)
    primary: StoreSettings = Field(default_factory=SqlStoreSettings)
    backup: StoreSettings | None = None
    mirrors: dict[str, MirrorSettings] = Field(default_factory=dict)
    replication: ReplicationSettings = Field(default_factory=ReplicationSettings)
    reconcile: ReconcileSettings = Field(default_factory=ReconcileSettings)
    history: HistorySettings = Field(default_factory=HistorySettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)

    @model_validator(mode="after")
    def _one_key_source(self) -> Settings:
        if self.encryption.kms is not None and self.encryption_keys is not None:
            raise ValueError("set encryption_keys or encryption.kms, not both")
        return self

    @field_validator("mirrors")
    @classmethod
    def _mirror_names(cls, v: dict[str, MirrorSettings]) -> dict[str, MirrorSettings]:
        for name in v:
            if not MIRROR_NAME.fullmatch(name):
                raise ValueError(
                    f"mirror name {name!r} must be a lowercase letter, then up to 30 of a-z 0-9 _"
                )
            if name in ("primary", "backup"):
                raise ValueError(f"a mirror cannot be called {name!r}: that is a store's role")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        # One without the other used to serve plain HTTP without a word.
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        return self

    @field_validator("admin_token")
    @classmethod
    def _admin_token_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().strip()) < MIN_ADMIN_TOKEN:
            raise ValueError(f"must be at least {MIN_ADMIN_TOKEN} characters")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("must be HOST:PORT, for example 127.0.0.1:8750")
        return v

    @property
    def embedded(self) -> bool:
        """True when no database is configured and PostgreSQL runs from ``pgserver``."""
        return self.database_url is None

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path.get() or os.environ.get(CONFIG_ENV)
        if path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(path)))
        return tuple(sources)


class _ConfigPath:
    """The ``--config`` file chosen on the command line (wins over the env variable)."""

    def __init__(self) -> None:
        self._value: str | None = None

    def get(self) -> str | None:
        return self._value

    def set(self, value: str | None) -> None:
        self._value = value


_config_path = _ConfigPath()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings or raise ``ConfigError`` with one line naming the bad field.

    Input values are never part of the message: a bad token must not be echoed.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        _config_path.set(str(path))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except (OSError, ValueError) as exc:  # a TOML file that does not parse
        raise ConfigError(f"configuration could not be read: {type(exc).__name__}") from None
    finally:
        _config_path.set(None)
    if settings.embedded and settings.backup is None and "backup" not in overrides:
        settings = settings.model_copy(update={"backup": FileStoreSettings()})
    return settings


def _describe(exc: ValidationError) -> str:
    first = exc.errors(include_input=False, include_url=False)[0]
    loc = list(first["loc"])
    if loc[:1] == ["mirrors"] and loc[2:3] == ["store"]:
        del loc[2]  # a mirror's store fields are configured flat beside its own
    field = ".".join(str(p) for p in loc if not _is_union_tag(p))
    extra = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid configuration: {field or 'settings'}: {first['msg']}{extra}"


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and part in {
        "sql",
        "file",
        "aws",
        "hashicorp",
        "gcp",
        "azure",
        "custom",
    }
