"""Proof of work before an SMS is sent (SPEC §3): ALTCHA v1 challenges, each solution accepted once.

A challenge is signed with an HMAC key from Secrets Manager and carries its expiry in its salt, so
the service keeps no state for challenges it hands out. A solution is checked here (format,
signature, expiry); that it is used only once is a conditional write the code request adds to its
own transaction (`once`), so a solution is spent only by a request that sends a code.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from chalicelib.config import Settings, settings
from chalicelib.privacy import altcha_key
from chalicelib.throttle import Lock

ALGORITHM: Final[Literal["SHA-256"]] = "SHA-256"
MAX_ENCODED = 2048  # a solution is about 300 characters; anything far longer is not one
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SALT = re.compile(r"[0-9a-f]{8,64}\?expires=[0-9]{1,12}&?")


@dataclass(frozen=True)
class Solution:
    """A verified solution: its challenge string names it for the accepted-once record."""

    challenge: str
    expires: int


class ProofOfWork:
    def __init__(self, key: Callable[[], str] = altcha_key, config: Settings | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._config = config or settings()
        self._clock = clock

    def challenge(self) -> dict[str, Any]:
        """A fresh challenge in the SPEC §3 shape (`maxnumber`, as ALTCHA v1 widgets read it)."""
        from altcha import ChallengeOptionsV1, create_challenge_v1  # only the code route needs it

        expires = dt.datetime.fromtimestamp(int(self._clock()) + self._config.challenge_ttl_seconds, dt.UTC)
        made = create_challenge_v1(ChallengeOptionsV1(algorithm=ALGORITHM, max_number=self._config.altcha_max_number,
                                                      hmac_key=self._key(), expires=expires))
        return {"algorithm": made.algorithm, "challenge": made.challenge, "maxnumber": made.max_number,
                "salt": made.salt, "signature": made.signature}

    def verify(self, encoded: Any) -> Solution | None:
        """The solution if `encoded` is a well-formed, correctly signed, unexpired ALTCHA v1 payload."""
        payload = _decode(encoded, self._config.altcha_max_number)
        if payload is None:
            return None
        expires = int(payload["salt"].split("expires=", 1)[1].rstrip("&"))
        if expires <= int(self._clock()):
            return None  # older than CHALLENGE_TTL_SECONDS
        from altcha import verify_solution_v1

        ok, _error = verify_solution_v1(payload, self._key(), check_expires=False)  # expiry: checked above
        return Solution(payload["challenge"], expires) if ok else None

    def once(self, solution: Solution) -> Lock:
        """The accepted-once record, held until the challenge has expired anyway."""
        digest = hashlib.sha256(solution.challenge.encode()).hexdigest()
        hold = max(60, solution.expires - int(self._clock()) + 60)
        return Lock(f"altcha#{digest}", hold)


def _decode(encoded: Any, max_number: int) -> Any | None:
    """Strict parsing first: the library trusts its input's shape, and no input may become a 500."""
    if not isinstance(encoded, str) or not encoded or len(encoded) > MAX_ENCODED:
        return None
    try:
        payload = json.loads(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(payload, dict):
        return None
    number = payload.get("number")
    fields_ok = (
        payload.get("algorithm") == ALGORITHM
        and isinstance(payload.get("challenge"), str) and _HEX64.fullmatch(payload["challenge"])
        and isinstance(payload.get("signature"), str) and _HEX64.fullmatch(payload["signature"])
        and isinstance(payload.get("salt"), str) and _SALT.fullmatch(payload["salt"])
        and isinstance(number, int) and not isinstance(number, bool) and 0 <= number <= max_number
    )
    if not fields_ok:
        return None
    # Extra keys (the widget's `took`) are ignored.
    return {k: payload[k] for k in ("algorithm", "challenge", "number", "salt", "signature")}

