"""The ``aws`` store: AWS Secrets Manager through aiobotocore, on the fenced-store template.

What every cloud store shares (names, remembered state, the entry lock, the
stale retry, the fence, listings, pacing and throttling, the error classes)
is ``fenced.py``'s; this module is AWS's write protocol, auth and error codes.

Entries. The SecretString is the canonical JSON of the values (at most
65536 bytes). CreateSecret tags the entry ``secretmirror:managed=true`` and
``secretmirror:deployment=<deployment id>``; an entry without this
deployment's tags is foreign.

The version is in the request token. Every write sends
``ClientRequestToken = "sm1-<version, 10 digits>-<content hash>"`` (47
characters; AWS and moto take 32-64), which becomes the AWS VersionId. The
token is a pure function of (secret id, version, values): a redelivery sends
the same token with the same value, which AWS answers without creating a
version. ListSecrets and DescribeSecret show which VersionId holds
``AWSCURRENT``, so ``list`` reads every entry's version and hash from listing
metadata without reading a value; a current VersionId that does not parse
was written by someone else (``Entry.foreign_write``).

AWS has no conditional write (PutSecretValue of an older version succeeds
and moves ``AWSCURRENT`` back), so the fence is all secretmirror's. The state
of an entry comes from DescribeSecret (AWS's read quota, not the ~50/s write
quota), which also checks the ownership tags. Calls per operation:

- put, entry remembered (steady state): 1 call, PutSecretValue.
- put, entry not remembered: DescribeSecret, then PutSecretValue or, for a
  new entry, CreateSecret. After a complete ``list``, an entry the listing did
  not show is new: CreateSecret alone (if it appeared meanwhile, AWS refuses
  and DescribeSecret takes over).
- put over a tombstone: + RestoreSecret (AWS refuses writes to an entry
  pending deletion). put when ``AWSCURRENT`` sits elsewhere while our token
  already exists (a console rollback): the re-put is a no-op in AWS, so
  + UpdateSecretVersionStage to move the label back.
- delete: TagResource ``secretmirror:tombstone=<version>`` then DeleteSecret:
  the tag survives the recovery window, so a late older put is refused and a
  newer one restores the entry. After a force delete
  (``recovery_window_days = 0``) AWS holds nothing to fence on: the tombstone
  is kept in this process only.
- get: 1 GetSecretValue (``VersionStage=AWSCURRENT``) when it answers the
  value this process remembers its own entry holding; else + DescribeSecret
  for the ownership tags (GetSecretValue carries none), unless the value is
  someone else's anyway. list: 1 ListSecrets per 100 entries.

Timeouts (3 s connect, 10 s read, 2 attempts) keep a write well inside a
delivery lease. ``location`` is ``aws:<endpoint or "aws">/<region>/<prefix>``
without the account id, which would cost an STS call: two stores in different
accounts with the same region and prefix count as one location, so start-up
refuses that pair; give them different prefixes. AWS error codes: see
``map_error``; KMS trouble (a disabled key) is an outage an operator fixes.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioCredentials, AioDeferredRefreshableCredentials
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    ParamValidationError,
    PartialCredentialsError,
)
from multidict import CIMultiDict

from secretmirror.errors import (
    ConfigError,
    StoreContended,
    StoreError,
    StoreNotFound,
    StoreRejected,
    StoreThrottled,
    StoreUnavailable,
)
from secretmirror.retry import asked_again
from secretmirror.settings import AwsStoreSettings
from secretmirror.stores.base import Entry, PutOutcome, StoreContext, StoredValue
from secretmirror.stores.fenced import (
    FencedStore,
    Stale,
    Write,
    a_hash,
    moves_forward,
)
from secretmirror.stores.http import POOL, retry_after_s

if TYPE_CHECKING:
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_secretsmanager.type_defs import (
        CreateSecretRequestTypeDef,
        FilterTypeDef,
        ListSecretsRequestTypeDef,
        UpdateSecretVersionStageRequestTypeDef,
    )
    from types_aiobotocore_sts import STSClient

T = TypeVar("T")

#: AWS Secrets Manager's limit on a SecretString.
MAX_VALUE_BYTES = 65536
#: Tags: ownership, and the newest delete's version (it outlives the recovery window).
TAG_MANAGED, TAG_DEPLOYMENT = "secretmirror:managed", "secretmirror:deployment"
TAG_TOMBSTONE = "secretmirror:tombstone"
CURRENT = "AWSCURRENT"

#: The request token: the version in 10 digits (so at most this), then the content hash.
_TOKEN, _MAX_VERSION = re.compile(r"sm1-(\d{10})-([0-9a-f]{32})"), 9_999_999_999
#: AWS secret names: 1-512 of these characters.
_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
#: Secrets per ListSecrets page.
_PAGE = 100

#: AWS error codes by meaning (``map_error``).
_THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
}
_CREDENTIALS = {
    "AccessDeniedException",
    "AccessDenied",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "SignatureDoesNotMatch",
    "ExpiredTokenException",
    "ExpiredToken",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}
#: KMS trouble (a disabled key, a missing grant) is fixed by an operator, not by the request.
_TRANSIENT = {
    "InternalServiceError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "DecryptionFailure",
    "EncryptionFailure",
}


def make_token(version: int, content_hash: str) -> str:
    """The ClientRequestToken (and so the VersionId) of ``version`` with ``content_hash``."""
    if not 1 <= version <= _MAX_VERSION:
        raise StoreRejected(f"version {version} does not fit the AWS request token")
    if a_hash(content_hash) is None:
        raise StoreRejected("the content hash must be 32 lowercase hex digits")
    return f"sm1-{version:010d}-{content_hash}"


def parse_token(version_id: str | None) -> tuple[int, str] | None:
    """(version, content hash) of a secretmirror VersionId; None for anyone else's."""
    match = _TOKEN.fullmatch(version_id or "")
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def map_error(exc: BaseException, operation: str) -> StoreError:
    """The ``Store*`` error for an aiobotocore failure of ``operation``.

    Messages name the operation and AWS's error code, never the request or
    AWS's message text (which may quote parameters).
    """
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        what = f"AWS {operation} failed: {code or f'HTTP {status}'}"
        if code in _THROTTLED or status == 429:
            return StoreThrottled(what, retry_after_s=_retry_after(exc.response))
        if code == "ResourceNotFoundException":
            return StoreNotFound(what)
        if code == "ResourceExistsException":
            return StoreContended(what)
        # AWS's own answer to the only attempt ends the request; after botocore's retry an
        # earlier attempt may land yet, and a gateway's timeout (502, 504) ends nothing.
        meta = exc.response.get("ResponseMetadata", {})
        settled = meta.get("RetryAttempts", 1) == 0 and status not in (502, 504)
        if code in _CREDENTIALS:
            return StoreUnavailable(f"{what} (credentials or permissions)", settled=settled)
        if code in _TRANSIENT or status >= 500:
            return StoreUnavailable(what, settled=settled)
        return StoreRejected(what)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError | CredentialRetrievalError):
        return StoreUnavailable(f"AWS {operation} failed: no usable credentials")
    if isinstance(exc, ParamValidationError):
        return StoreRejected(f"AWS {operation} failed: the request is invalid")
    if isinstance(exc, BotoCoreError | aiohttp.ClientError | OSError | TimeoutError):
        return StoreUnavailable(f"AWS {operation} failed: {type(exc).__name__}")
    return StoreError(f"AWS {operation} failed: {type(exc).__name__}")


def _retry_after(response: Mapping[str, Any]) -> float | None:
    headers = CIMultiDict(response.get("ResponseMetadata", {}).get("HTTPHeaders", {}))
    return retry_after_s(headers, default=1.0)  # AWS quotas refill per second


def _is_deleted_error(exc: BaseException) -> bool:
    """AWS (and moto) refusing an operation because the entry is pending deletion."""
    cause = exc.__cause__
    error = cause.response.get("Error", {}) if isinstance(cause, ClientError) else {}
    return (
        error.get("Code") == "InvalidRequestException"
        and "delet" in str(error.get("Message", "")).lower()
    )


@dataclass(frozen=True, slots=True)
class _State:
    """What AWS holds for one entry, as this process last saw it."""

    exists: bool
    current_id: str | None = None
    #: The secretmirror version holding AWSCURRENT; None when someone else wrote it.
    current: int | None = None
    current_hash: str | None = None
    #: The newest secretmirror version among the entry's labelled versions.
    newest: int = 0
    tombstone: int = 0
    pending_deletion: bool = False
    #: Assumed missing after a complete listing, not read (``FencedStore._unlisted``).
    guessed: bool = False

    def should_write(self, version: int) -> bool:
        """The fence; where AWSCURRENT is someone else's, or the entry was deleted by hand
        (pending deletion above our tombstone), ours goes back on top."""
        if self.current is None:
            return moves_forward(version, held=self.newest, tombstone=self.tombstone, again=True)
        again = self.pending_deletion
        return moves_forward(version, held=self.current, tombstone=self.tombstone, again=again)

    def written(self, token: str, write: Write) -> _State:
        """The entry once ``write`` holds AWSCURRENT under ``token``."""
        return replace(
            self,
            exists=True,
            current_id=token,
            current=write.version,
            current_hash=write.hash,
            newest=max(self.newest, write.version),
            pending_deletion=False,
            guessed=False,
        )

    @property
    def deleted(self) -> bool:
        """Pending deletion, or tagged by a delete that stopped before DeleteSecret (a crash)."""
        live = self.current if self.current is not None else self.newest
        return self.pending_deletion or self.tombstone > live

    @classmethod
    def of(cls, described: Mapping[str, Any]) -> _State:
        """From a DescribeSecret answer or one ListSecrets item."""
        stages: Mapping[str, list[str]] = (
            described.get("VersionIdsToStages") or described.get("SecretVersionsToStages") or {}
        )
        current_id = next((vid for vid, labels in stages.items() if CURRENT in labels), None)
        ours = [parsed for vid in stages if (parsed := parse_token(vid)) is not None]
        current = parse_token(current_id)
        tombstone = _tags(described).get(TAG_TOMBSTONE, "0")
        return cls(
            exists=True,
            current_id=current_id,
            current=current[0] if current else None,
            current_hash=current[1] if current else None,
            newest=max((version for version, _ in ours), default=0),
            tombstone=int(tombstone) if tombstone.isdigit() else 0,
            pending_deletion=described.get("DeletedDate") is not None,
        )

    def entry(self, secret_id: str) -> Entry:
        if self.pending_deletion:
            # At our delete's version: one made in the console carries none (0), so verify
            # counts it missing, where a delete of ours is a tombstone at its version.
            return Entry(secret_id, self.tombstone, None, deleted=True)
        if self.deleted:
            return Entry(secret_id, max(self.tombstone, self.newest), None, deleted=True)
        if self.current is None:
            return Entry(secret_id, self.newest, None, foreign_write=True)
        return Entry(secret_id, self.current, self.current_hash)


def _tags(described: Mapping[str, Any]) -> dict[str, str]:
    return {str(t.get("Key")): str(t.get("Value")) for t in described.get("Tags") or []}


class _RoleSession(AioSession):
    """A session whose clients sign with assumed-role credentials that refresh themselves."""

    def __init__(self, credentials: AioDeferredRefreshableCredentials) -> None:
        super().__init__()
        self._role_credentials = credentials

    # The stubs type the parent's override of botocore's sync method as static
    # credentials (and ignore the override themselves); refreshable ones are what
    # aiobotocore's own assume-role provider hands its clients.
    async def get_credentials(self) -> AioCredentials | None:  # type: ignore[override]
        return self._role_credentials  # type: ignore[return-value]


class AwsStore(FencedStore[_State]):
    type = "aws"
    provider = "AWS"
    max_value_bytes = MAX_VALUE_BYTES
    name_pattern = _NAME

    def __init__(self, settings: AwsStoreSettings, ctx: StoreContext) -> None:
        _check(settings)
        super().__init__(ctx, settings.name_prefix, settings.max_writes_per_s)
        self._settings = settings
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: SecretsManagerClient | None = None
        self._filters: list[FilterTypeDef] = [
            {"Key": "tag-key", "Values": [TAG_DEPLOYMENT]},
            {"Key": "tag-value", "Values": [ctx.deployment_id]},
        ]

    @property
    def location(self) -> str:
        s = self._settings
        return f"aws:{s.endpoint_url or 'aws'}/{s.region}/{s.name_prefix}"

    @property
    def keeps_tombstones(self) -> bool:
        """False with ``recovery_window_days = 0``: a force delete leaves nothing in AWS."""
        return self._settings.recovery_window_days > 0

    # -- lifecycle --

    async def open(self) -> None:
        """Build the client; no request is sent, so a start-up does not wait for AWS."""
        stack = contextlib.AsyncExitStack()
        session_name = f"secretmirror-{self._deployment_id[:8]}"
        try:
            self._client = await open_client(self._settings, stack, "secretsmanager", session_name)
        except BaseException as exc:
            await stack.aclose()
            if isinstance(exc, BotoCoreError | ClientError):
                raise map_error(exc, "open") from exc
            raise
        self._stack = stack

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None

    async def health(self) -> None:
        client = self._require()
        await self._call(
            "ListSecrets", lambda: client.list_secrets(Filters=self._filters, MaxResults=1)
        )

    # -- reads --

    async def _get(self, secret_id: str, name: str) -> StoredValue | None:
        client = self._require()
        try:
            answer = await self._call(
                "GetSecretValue",
                lambda: client.get_secret_value(SecretId=name, VersionStage=CURRENT),
            )
        except StoreRejected as exc:
            if _is_deleted_error(exc):
                return None
            raise
        known = self._remembered.peek(secret_id)
        # The value this process last saw or wrote of its own entry is ours; any other
        # is served only once the ownership tags say so (GetSecretValue carries none).
        unknown = known is None or known.current_id != answer.get("VersionId")
        if known is not None and unknown:
            # Changed behind this process's back: re-read on write.
            self._remembered.forget(secret_id)
        parsed = parse_token(answer.get("VersionId"))
        if parsed is None:
            return None  # someone else's value: its version is unknown, so it serves no read
        if unknown and not await self._served_ours(secret_id, name, answer):
            return None  # another deployment's entry, or one made by hand
        values = self._values(secret_id, answer.get("SecretString"))
        return StoredValue(secret_id, parsed[0], parsed[1], values)

    async def _served_ours(self, secret_id: str, name: str, answer: Mapping[str, Any]) -> bool:
        """GetSecretValue's ``answer`` came from this deployment's entry (1 DescribeSecret).

        The tags decide, of the very secret that answered: a secret deleted and
        made again under the name between the two calls has another ARN.
        """
        described = await self._described(name)
        if described is None or not self._owns(described):
            return False
        if described.get("ARN") != answer.get("ARN"):
            raise StoreContended(f"the AWS entry of {secret_id} was replaced during the read")
        return True

    # -- the template's hooks --

    def _checked_write(self, version: int, values: dict[str, str], content_hash: str) -> Write:
        write = super()._checked_write(version, values, content_hash)
        make_token(write.version, write.hash)  # the version must fit the token
        return write

    async def _load(self, secret_id: str, name: str) -> _State | None:
        described = await self._described(name)
        if described is None:
            return None
        if not self._owns(described):
            raise self._foreign(name)
        return _State.of(described)

    def _absent(self) -> _State:
        return _State(exists=False)

    def _unlisted(self) -> _State:
        # CreateSecret never overwrites an entry: if one appeared, DescribeSecret decides.
        return _State(exists=False, guessed=True)

    def _agrees(self, known: _State, listed: _State) -> bool:
        # A tombstone newer than AWS's tag is one only this process holds.
        return known.tombstone >= listed.tombstone and replace(known, tombstone=0) == replace(
            listed, tombstone=0
        )

    async def _pages(self) -> AsyncIterator[Sequence[Any]]:
        client = self._require()
        query: ListSecretsRequestTypeDef = {
            "Filters": self._filters,
            "IncludePlannedDeletion": True,
            "MaxResults": _PAGE,
        }
        while True:
            ask = functools.partial(client.list_secrets, **query)
            page = await asked_again(functools.partial(self._call, "ListSecrets", ask))
            yield page.get("SecretList", [])
            if not page.get("NextToken"):
                return
            query["NextToken"] = page["NextToken"]

    async def _listed(self, item: Any) -> tuple[str, str, _State] | None:
        name = str(item.get("Name", ""))
        secret_id = self._secret_id_of(name)
        if secret_id is None or not self._owns(item):
            return None
        return secret_id, name, _State.of(item)

    # -- steps of put and delete --

    async def _put_as(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        if not state.exists:
            return await self._create(secret_id, name, state, write)
        version, token = write.version, make_token(write.version, write.hash)
        if not state.should_write(version):
            return PutOutcome.UNCHANGED
        client = self._require()
        if state.pending_deletion:
            await self._write_or_stale(
                "RestoreSecret", lambda: client.restore_secret(SecretId=name)
            )
        try:
            answer = await self._write_or_stale(
                "PutSecretValue",
                lambda: client.put_secret_value(
                    SecretId=name, SecretString=write.text, ClientRequestToken=token
                ),
            )
        except StoreContended:
            raise StoreRejected(
                f"AWS already holds version {version} of {secret_id} with other content"
            ) from None
        if CURRENT not in answer.get("VersionStages", []):
            # The token existed with this value, so AWS changed nothing; the label is elsewhere.
            await self._move_current(name, token, state.current_id)
        self._remembered.remember(secret_id, state.written(token, write))
        return PutOutcome.WRITTEN

    async def _create(self, secret_id: str, name: str, state: _State, write: Write) -> PutOutcome:
        version, token = write.version, make_token(write.version, write.hash)
        if version <= state.tombstone:
            return PutOutcome.UNCHANGED  # force-deleted by this process at a newer version
        request: CreateSecretRequestTypeDef = {
            "Name": name,
            "SecretString": write.text,
            "ClientRequestToken": token,
            "Tags": [
                {"Key": TAG_MANAGED, "Value": "true"},
                {"Key": TAG_DEPLOYMENT, "Value": self._deployment_id},
            ],
        }
        if self._settings.kms_key_id:
            request["KmsKeyId"] = self._settings.kms_key_id
        client = self._require()
        try:
            await self._write("CreateSecret", lambda: client.create_secret(**request))
        except StoreContended:
            raise Stale from None  # created meanwhile; DescribeSecret decides, ownership too
        except StoreRejected as exc:
            if _is_deleted_error(exc) and state.guessed:
                raise Stale from None  # pending deletion: DescribeSecret, then restore
            if _is_deleted_error(exc):
                raise StoreUnavailable(
                    f"AWS is still deleting the previous entry of {secret_id}; retry later"
                ) from exc
            raise
        self._remembered.remember(secret_id, state.written(token, write))
        return PutOutcome.WRITTEN

    async def _move_current(self, name: str, token: str, current_id: str | None) -> None:
        request: UpdateSecretVersionStageRequestTypeDef = {
            "SecretId": name,
            "VersionStage": CURRENT,
            "MoveToVersionId": token,
        }
        if current_id is not None:
            request["RemoveFromVersionId"] = current_id
        client = self._require()
        try:
            await self._write(
                "UpdateSecretVersionStage",
                lambda: client.update_secret_version_stage(**request),
            )
        except (StoreRejected, StoreNotFound):
            raise Stale from None  # the label moved since we looked: look again

    async def _delete_as(self, secret_id: str, name: str, state: _State, version: int) -> None:
        if not state.exists or state.pending_deletion or (state.current or 0) > version:
            # Gone, already deleted, or newer: only remember the tombstone, to fence late puts.
            if version > state.tombstone:
                self._remembered.remember(secret_id, replace(state, tombstone=version))
            return
        client = self._require()
        # The tag alone does not make a delete: on a live entry it is one that stopped
        # between TagResource and DeleteSecret (a crash), so finish it.
        if state.tombstone < version:
            await self._write_or_stale(
                "TagResource",
                lambda: client.tag_resource(
                    SecretId=name, Tags=[{"Key": TAG_TOMBSTONE, "Value": str(version)}]
                ),
            )
        days = self._settings.recovery_window_days
        force = days == 0

        async def delete() -> object:
            if force:
                return await client.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
            return await client.delete_secret(SecretId=name, RecoveryWindowInDays=days)

        await self._write_or_stale("DeleteSecret", delete)
        self._remembered.remember(
            secret_id,
            replace(state, exists=not force, tombstone=version, pending_deletion=not force),
        )

    # -- calls --

    async def _described(self, name: str) -> Mapping[str, Any] | None:
        """DescribeSecret's answer (tags, version stages, ARN); None when AWS holds no entry."""
        client = self._require()
        try:
            return await self._call("DescribeSecret", lambda: client.describe_secret(SecretId=name))
        except StoreNotFound:
            return None

    def _owns(self, described: Mapping[str, Any]) -> bool:
        tags = _tags(described)
        return tags.get(TAG_MANAGED) == "true" and tags.get(TAG_DEPLOYMENT) == self._deployment_id

    def _require(self) -> SecretsManagerClient:
        if self._client is None:
            raise StoreUnavailable("the aws store is not open")
        return self._client

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._throttle.wait()
        try:
            return await call()
        except (BotoCoreError, ClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._throttle.noted(map_error(exc, operation)) from exc

    async def _write(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        await self._bucket.acquire()
        return await self._call(operation, call)

    async def _write_or_stale(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """A write whose target may have vanished or been deleted since we looked."""
        try:
            return await self._write(operation, call)
        except StoreNotFound:
            raise Stale from None
        except StoreRejected as exc:
            if _is_deleted_error(exc):
                raise Stale from None
            raise


async def open_client(
    s: AwsStoreSettings,
    stack: contextlib.AsyncExitStack,
    service: Literal["secretsmanager", "kms"],
    session_name: str,
) -> Any:
    """A client of ``service`` (closed with ``stack``) signing with the configured credentials.

    implicit: botocore's default chain. secret-key / sts-token: the configured
    keys. iam-role: AssumeRole on ``role_arn``, signed with the configured keys
    if any (else the default chain), refreshed before the role session expires.
    Shared by the store and by KMS envelope encryption (``kms.py``).
    """
    keys: dict[str, Any] = {}
    if s.auth_method != "implicit" and s.aws_access_key_id and s.aws_secret_access_key:
        keys = {
            "aws_access_key_id": s.aws_access_key_id,
            "aws_secret_access_key": s.aws_secret_access_key.get_secret_value(),
            "aws_session_token": (
                s.aws_session_token.get_secret_value() if s.aws_session_token else None
            ),
        }
    session = AioSession()
    if s.auth_method == "iam-role":
        endpoint = _sts_endpoint(s.endpoint_url)
        sts: STSClient = await stack.enter_async_context(
            session.create_client(
                "sts", region_name=s.region, endpoint_url=endpoint, config=_config(), **keys
            )
        )
        assert s.role_arn is not None  # checked by _check
        role_arn = s.role_arn

        async def assume() -> dict[str, str]:
            answer = await sts.assume_role(RoleArn=role_arn, RoleSessionName=session_name)
            creds = answer["Credentials"]
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        session, keys = _RoleSession(AioDeferredRefreshableCredentials(assume, "assume-role")), {}
    client = session.create_client(
        service, region_name=s.region, endpoint_url=s.endpoint_url, config=_config(), **keys
    )
    return await stack.enter_async_context(client)


def _sts_endpoint(url: str | None) -> str | None:
    """An emulator's endpoint serves STS too; an AWS endpoint is Secrets Manager's only."""
    if not url or (urlsplit(url).hostname or "").endswith(
        (".amazonaws.com", ".amazonaws.com.cn", ".api.aws")
    ):
        return None  # botocore's regional STS endpoint (or AWS_ENDPOINT_URL_STS)
    return url


def _config() -> AioConfig:
    return AioConfig(
        retries={"max_attempts": 2, "mode": "standard"},
        connect_timeout=3,
        read_timeout=10,
        max_pool_connections=POOL,
        user_agent_extra="secretmirror",
    )


def _check(settings: AwsStoreSettings) -> None:
    """Refuse settings AWS would refuse at the first request."""
    if settings.recovery_window_days not in (0, *range(7, 31)):
        raise ConfigError("aws: recovery_window_days must be 0 (force delete) or 7-30")
    needs = {
        "secret-key": ("aws_access_key_id", "aws_secret_access_key"),
        "sts-token": ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"),
        "iam-role": ("role_arn",),
    }.get(settings.auth_method, ())
    for field in needs:
        if getattr(settings, field) is None:
            raise ConfigError(f"aws: auth_method {settings.auth_method} needs {field}")
