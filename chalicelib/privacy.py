"""Keyed hashes and encryption: how personal data is kept out of storage (SPEC §6).

- phone numbers used as keys are HMAC-SHA256 with a secret pepper (Secrets Manager);
- the phone number needed later (SMS, partner lookups) and the ID digits until the
  carrier check are encrypted under a per-query KMS data key, with the query id as
  encryption context so a ciphertext cannot be replayed into another query's record.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import clients
from chalicelib.config import settings


def _secret(name: str) -> str:
    return str(clients.secrets().get(name, max_age=settings().secret_max_age_seconds))


class Hasher:
    """HMAC of personal values with the service's pepper."""

    def __init__(self, pepper: Callable[[], str] | None = None) -> None:
        self._pepper = pepper or (lambda: _secret(settings().pepper_secret_name))

    def digest(self, *parts: str) -> str:
        key = self._pepper().encode()
        return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


class Vault:
    """Envelope encryption for the few personal values the workflow must read back.

    A query gets its own data key: one KMS GenerateDataKey seals every field of the query
    (phone and ID digits together), each later step opens them with one KMS Decrypt. The
    key's encryption context and each field's associated data bind a ciphertext to its query
    and field, so it cannot be replayed into another record or swapped between fields; a
    field is discarded by deleting its ciphertext.
    """

    def __init__(self, kms_client: Any | None = None, key_id: str | None = None) -> None:
        self._kms = kms_client
        self._key_id = key_id or settings().kms_key_id

    @property
    def kms(self) -> Any:
        return self._kms or clients.client("kms")

    def seal(self, query_id: str, fields: dict[str, str]) -> Sealed:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # lazy: intake path only

        key = self.kms.generate_data_key(KeyId=self._key_id, KeySpec="AES_256",
                                         EncryptionContext={"query_id": query_id})
        aead = AESGCM(key["Plaintext"])
        sealed = {}
        for name, value in fields.items():
            nonce = os.urandom(12)
            blob = nonce + aead.encrypt(nonce, value.encode(), _associated(query_id, name))
            sealed[name] = base64.b64encode(blob).decode()
        return Sealed(base64.b64encode(key["CiphertextBlob"]).decode(), sealed)

    def open(self, query_id: str, data_key: str, fields: dict[str, str | None]) -> dict[str, str]:
        """The fields still present, in clear; ValueError if anything does not belong to this query."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            key = self.kms.decrypt(CiphertextBlob=base64.b64decode(data_key),
                                   EncryptionContext={"query_id": query_id})["Plaintext"]
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "InvalidCiphertextException":
                raise ValueError("data key does not belong to this query") from exc
            raise
        aead = AESGCM(bytes(key))
        opened = {}
        for name, value in fields.items():
            if value is None:
                continue
            blob = base64.b64decode(value)
            try:
                opened[name] = aead.decrypt(blob[:12], blob[12:], _associated(query_id, name)).decode()
            except InvalidTag as exc:
                raise ValueError(f"{name} does not belong to this query") from exc
        return opened


@dataclass(frozen=True)
class Sealed:
    data_key: str
    fields: dict[str, str]


def _associated(query_id: str, field: str) -> bytes:
    return f"{query_id}\x1f{field}".encode()


def partner_secret(secret_name: str) -> str:
    return _secret(secret_name)


def altcha_key() -> str:
    """The HMAC key that signs proof-of-work challenges (SPEC §3), kept like the pepper."""
    return _secret(settings().altcha_secret_name)
