"""Solve a proof-of-work challenge for curl users (SPEC §3): prints the `altcha` value to send.

    ALTCHA=$(.venv/bin/python -m local.altcha)            # fetches GET /v1/challenges from make run's API
    ALTCHA=$(.venv/bin/python -m local.altcha - < 428.json)  # or solves the challenge a 428 carried

The page's widget does the same in the browser; any ALTCHA v1 library does it for API clients.
"""
from __future__ import annotations

import base64
import hashlib
import json
import sys
import urllib.request
from typing import Any

API = "http://127.0.0.1:8000"


def solve(challenge: dict[str, Any]) -> str:
    """The base64 solution: the number n with SHA-256(salt + n) = challenge."""
    salt, target = challenge["salt"], challenge["challenge"]
    largest = int(challenge.get("maxnumber", challenge.get("maxNumber", 1_000_000)))
    for number in range(largest + 1):
        if hashlib.sha256(f"{salt}{number}".encode()).hexdigest() == target:
            solution = {"algorithm": challenge["algorithm"], "challenge": target, "number": number,
                        "salt": salt, "signature": challenge["signature"]}
            return base64.b64encode(json.dumps(solution).encode()).decode()
    raise ValueError("no solution up to maxnumber")


def fetch_challenge(api: str = API) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/v1/challenges", timeout=10) as response:
        return dict(json.load(response))


def main() -> None:
    if sys.argv[1:] == ["-"]:
        given = json.load(sys.stdin)
        # A whole 428 body carries the challenge object under "challenge"; a challenge alone has a string there.
        challenge = given["challenge"] if isinstance(given.get("challenge"), dict) else given
    else:
        challenge = fetch_challenge()
    print(solve(challenge))


if __name__ == "__main__":
    main()
