"""Request signing shared by partners, carriers and us (SPEC §4).

X-Timestamp: Unix seconds; X-Signature: hex HMAC-SHA256 of "{timestamp}.{raw body}".
"""
from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from chalicelib import errors

MAX_AGE_SECONDS = 300
# ASCII only and bounded: str.isdigit() takes "²" (int() then fails) and int() refuses 4,300+ digits.
# Unix seconds fit in 12 digits for the next 30,000 years.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
# A hex SHA-256; compare_digest() raises on non-ASCII str, so the form is checked first.
_SIGNATURE = re.compile(r"[0-9a-fA-F]{64}")


def signature(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(time.time() if now is None else now))
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-Timestamp": timestamp,
        "X-Signature": signature(secret, timestamp, body),
    }


def verify(secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> None:
    """BadSignature unless the request is signed with `secret` within the last 300 s."""
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp = lowered.get("x-timestamp", "")
    offered = lowered.get("x-signature", "")
    if not _TIMESTAMP.fullmatch(timestamp) or not _SIGNATURE.fullmatch(offered):
        raise errors.BadSignature()
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > MAX_AGE_SECONDS:
        raise errors.BadSignature("签名已过期。")
    if not hmac.compare_digest(signature(secret, timestamp, body), offered.lower()):
        raise errors.BadSignature()
