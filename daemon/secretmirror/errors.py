"""One exception root. Each class's docstring is its default message.

The API turns a ``SecretMirrorError`` into ``{"error": {"code", "message"}}`` with
its ``status``; store back-ends wrap provider errors into the ``Store*`` classes
so the replicator decides retry, fallback or dead letter without knowing any
provider. Messages never carry secret values, tokens or keys.
"""

from __future__ import annotations


class SecretMirrorError(Exception):
    """Something went wrong."""

    status = 500
    code = "internal"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ConfigError(SecretMirrorError):
    """The configuration is invalid."""

    code = "invalid_configuration"


class ListenError(SecretMirrorError):
    """The HTTP listener cannot be opened."""

    code = "cannot_listen"


class BadRequest(SecretMirrorError):
    """The request is malformed."""

    status = 400
    code = "bad_request"


class Unauthorized(SecretMirrorError):
    """A valid bearer token is required."""

    status = 401
    code = "unauthorized"


class Forbidden(SecretMirrorError):
    """Your role does not allow this."""

    status = 403
    code = "forbidden"


class NotFound(SecretMirrorError):
    """No such resource."""

    status = 404
    code = "not_found"


class Conflict(SecretMirrorError):
    """The resource conflicts with an existing one."""

    status = 409
    code = "conflict"


class NameTaken(Conflict):
    """A secret with this name already exists."""

    code = "name_taken"


class AmbiguousName(Conflict):
    """You can see a private and a shared secret of this name: pick one with ?private=true|false."""

    code = "ambiguous_name"


class JobRunning(Conflict):
    """A job of this mode is already running."""

    code = "job_running"


class Gone(SecretMirrorError):
    """That version is no longer kept."""

    status = 410
    code = "gone"


class PreconditionFailed(SecretMirrorError):
    """The secret changed since the version given in If-Match."""

    status = 412
    code = "precondition_failed"


class TooLarge(SecretMirrorError):
    """The secret's values exceed the size cap."""

    status = 413
    code = "too_large"


class Invalid(SecretMirrorError):
    """A field is invalid."""

    status = 422
    code = "invalid_field"


class TooManyRequests(SecretMirrorError):
    """Too many failed authentications from this address; try again later."""

    status = 429
    code = "too_many_requests"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__()
        self.retry_after_s = retry_after_s


class RequestTimeout(SecretMirrorError):
    """The request body did not arrive in time."""

    status = 408
    code = "request_timeout"


class Unavailable(SecretMirrorError):
    """A dependency is unavailable; try again shortly."""

    status = 503
    code = "unavailable"


class SchemaMismatch(SecretMirrorError):
    """The database schema does not match this version of secretmirror."""

    status = 503
    code = "schema_mismatch"


class DecryptionError(SecretMirrorError):
    """A ciphertext could not be decrypted with any configured key.

    Raised by ``crypto.Keyring`` for a corrupt, moved or foreign-keyed
    ciphertext. It is never an answer of its own: a store entry that raises it
    is a failed read of that store (``RoleStore`` turns it into
    ``StoreUnreadable``, reads fall back, verify reports ``unreadable``).
    """

    status = 503
    code = "decryption_failed"


# -- store errors: the small set every back-end maps its provider errors to --


class StoreError(SecretMirrorError):
    """The secrets store failed."""

    status = 503
    code = "store_error"
    reason = "error"


class StoreUnavailable(StoreError):
    """The secrets store cannot be reached."""

    reason = "unavailable"

    def __init__(self, message: str | None = None, *, settled: bool = False) -> None:
        super().__init__(message)
        #: The store answered the request with an error status (not a gateway's timeout)
        #: or it was never sent: whatever it did is done, it cannot land later.
        self.settled = settled


class StoreThrottled(StoreError):
    """The secrets store is throttling requests."""

    reason = "throttled"

    def __init__(
        self, message: str | None = None, retry_after_s: float | None = None, *, local: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        #: This process held the call back before its write was sent (its own pacing,
        #: a time limit spent queueing): not an attempt of the write, never dead-lettered.
        self.local = local


class StoreCutOff(StoreThrottled):
    """The caller's time limit ran out with a request in flight, after the call queued
    locally (the store had time left): throttling, as the queue spent the time, but a
    write that may still land, so its lease is kept as after a timeout."""


def may_have_landed(exc: BaseException) -> bool:
    """A write that failed with ``exc`` may land yet: it timed out or was cut off mid-request
    (not a request the store answered, nor one never sent)."""
    if isinstance(exc, StoreUnavailable):
        return not exc.settled
    return isinstance(exc, StoreCutOff)


class StoreRejected(StoreError):
    """The secrets store rejected the request permanently (too large, invalid): never retried."""

    reason = "rejected"


class StoreContended(StoreError):
    """A concurrent change to the entry won the race; retry the entry (the store is up)."""

    reason = "contended"

    def __init__(self, message: str | None = None, *, local: bool = False) -> None:
        super().__init__(message)
        #: Another writer here holds the entry (a name lease) and nothing was sent: not an
        #: attempt of the write, never dead-lettered (a dead holder's lease lapses).
        self.local = local


class StoreForeignEntry(StoreError):
    """The store holds an entry at this name that is not this deployment's: never touched.

    Permanent: the delivery dead-letters at once and is never retried by itself.
    """

    reason = "foreign_entry"


class StoreUnreadable(StoreError):
    """The store holds the entry, but its ciphertext does not decrypt."""

    reason = "unreadable"


class StoreNotFound(StoreError):
    """The store has no such entry."""

    status = 404
    reason = "not_found"


#: How much of a caller's string an error message repeats.
ECHO_CHARS = 64


def echoed(text: str) -> str:
    """``text`` quoted for an error message, cut to ``ECHO_CHARS`` characters and "…".

    A message repeats what the caller sent (an unknown field, store or parameter) so they see
    their typo; a request may send a megabyte of it, which the answer and the logs must not.
    """
    return repr(text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…")
