"""AES-256-GCM envelopes with a keyring: the first key encrypts, every key decrypts.

Envelope layout (bytes): ``version(1) | key id(8) | nonce(12) | ciphertext+tag``.
The caller passes associated data (the secret id and version) so a ciphertext
copied onto another row or version fails to decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from secretmirror.errors import ConfigError, DecryptionError

_FORMAT = 1
_KEY_ID_LEN = 8
_NONCE_LEN = 12
_HEADER = 1 + _KEY_ID_LEN + _NONCE_LEN


def key_id(key: bytes) -> bytes:
    """A short, non-secret fingerprint of a key, stored in each envelope."""
    return hashlib.sha256(b"secretmirror-key-id:" + key).digest()[:_KEY_ID_LEN]


def envelope_key_id(envelope: bytes) -> bytes:
    """The key id an envelope names (what the ``key_id`` columns of migration 0005 hold)."""
    return envelope[1 : 1 + _KEY_ID_LEN]


def key_id_hex(kid: bytes) -> str:
    """How a key id is shown: 16 hex digits (the API, the CLI, start-up errors)."""
    return kid.hex()


def generate_key() -> str:
    """A fresh base64 key for ``encryption_keys``."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def parse_keys(text: str) -> list[bytes]:
    """Parse ``encryption_keys``: comma-separated base64 32-byte keys, first one encrypts."""
    keys: list[bytes] = []
    for position, part in enumerate(p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            key = base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"encryption_keys: key {position + 1} is not valid base64") from None
        if len(key) != 32:
            raise ConfigError(f"encryption_keys: key {position + 1} is not 32 bytes")
        keys.append(key)
    if not keys:
        raise ConfigError("encryption_keys: no key given")
    return keys


class Keyring:
    """Encrypts with the first key, decrypts with whichever key the envelope names."""

    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ConfigError("encryption_keys: no key given")
        self._primary_id = key_id(keys[0])
        self._ciphers = {key_id(k): AESGCM(k) for k in keys}
        self._keys = list(keys)

    @property
    def primary_key_id(self) -> bytes:
        return self._primary_id

    @property
    def key_ids(self) -> list[bytes]:
        """The configured key ids in order; the first encrypts."""
        return [key_id(k) for k in self._keys]

    def knows(self, kid: bytes) -> bool:
        """True when a configured key can decrypt envelopes that name ``kid``."""
        return kid in self._ciphers

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        body = self._ciphers[self._primary_id].encrypt(nonce, plaintext, aad)
        return bytes([_FORMAT]) + self._primary_id + nonce + body

    def decrypt(self, envelope: bytes, aad: bytes) -> bytes:
        if len(envelope) < _HEADER + 16 or envelope[0] != _FORMAT:
            raise DecryptionError("the ciphertext is malformed")
        kid = envelope[1 : 1 + _KEY_ID_LEN]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise DecryptionError("the ciphertext was encrypted with a key that is not configured")
        nonce = envelope[1 + _KEY_ID_LEN : _HEADER]
        try:
            return cipher.decrypt(nonce, envelope[_HEADER:], aad)
        except InvalidTag:
            raise DecryptionError() from None

    def opens(self, envelope: bytes, aad: bytes) -> bool:
        """True when ``envelope`` decrypts: for listings that report unreadable entries."""
        try:
            self.decrypt(envelope, aad)
        except DecryptionError:
            return False
        return True

    def needs_reencryption(self, envelope: bytes) -> bool:
        return envelope_key_id(envelope) != self._primary_id


def secret_aad(secret_id: str, version: int) -> bytes:
    """Associated data binding a ciphertext to one secret and one version."""
    return f"secret:{secret_id}:{version}".encode()


def content_hash(hash_key: bytes, secret_id: str, canonical: bytes) -> str:
    """Keyed hash of a secret's canonical values, safe to store beside a provider entry.

    Keyed (HMAC) and bound to the secret id so a provider's tags reveal neither a
    low-entropy value nor that two secrets hold the same one.
    """
    mac = hmac.new(hash_key, secret_id.encode() + b"\0" + canonical, hashlib.sha256)
    return mac.hexdigest()[:32]


def token_hash(token: str) -> bytes:
    """API tokens are 256-bit random strings, so a plain SHA-256 is a safe lookup hash."""
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return "smt_" + secrets.token_urlsafe(32)
