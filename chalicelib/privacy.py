"""Keyed hashes and encryption: how personal data is kept out of storage (SPEC §6).

- phone numbers used as keys are HMAC-SHA256 with a secret pepper (Secrets Manager);
- the phone number needed later (SMS, partner lookups) and the ID digits until the
  carrier check are KMS-encrypted, with the query id as encryption context so a
  ciphertext cannot be replayed into another query's record.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import clients
from chalicelib.config import settings


def _secret(name: str) -> str:
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(name, max_age=settings().secret_max_age_seconds)
    return str(value)


class Hasher:
    """HMAC of personal values with the service's pepper."""

    def __init__(self, pepper: Callable[[], str] | None = None) -> None:
        self._pepper = pepper or (lambda: _secret(settings().pepper_secret_name))

    def digest(self, *parts: str) -> str:
        key = self._pepper().encode()
        return hmac.new(key, "\x1f".join(parts).encode(), hashlib.sha256).hexdigest()


class Vault:
    """KMS envelope for the few personal values the workflow must read back."""

    def __init__(self, kms_client: Any | None = None, key_id: str | None = None) -> None:
        self._kms = kms_client
        self._key_id = key_id or settings().kms_key_id

    @property
    def kms(self) -> Any:
        return self._kms or clients.client("kms")

    def seal(self, plaintext: str, query_id: str) -> str:
        blob = self.kms.encrypt(
            KeyId=self._key_id,
            Plaintext=plaintext.encode(),
            EncryptionContext={"query_id": query_id},
        )["CiphertextBlob"]
        return base64.b64encode(blob).decode()

    def open(self, sealed: str, query_id: str) -> str:
        try:
            out = self.kms.decrypt(
                CiphertextBlob=base64.b64decode(sealed),
                EncryptionContext={"query_id": query_id},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "InvalidCiphertextException":
                raise ValueError("ciphertext does not belong to this query") from exc
            raise
        return bytes(out["Plaintext"]).decode()


def partner_secret(secret_name: str) -> str:
    return _secret(secret_name)
