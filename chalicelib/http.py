"""Signed JSON POSTs to partners and carriers over one pooled HTTP client."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

import urllib3

from chalicelib import errors
from chalicelib.api.requests import parse_json
from chalicelib.signing import signed_headers

TIMEOUT = urllib3.Timeout(connect=3.0, read=10.0)


@functools.cache
def _pool() -> urllib3.PoolManager:
    return urllib3.PoolManager(num_pools=32, maxsize=8, retries=False, timeout=TIMEOUT)


class Unreachable(Exception):
    """Connection refused or reset, DNS failure, timeout: a transient failure."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or None


def post_signed(url: str, payload: dict[str, Any], secret: str) -> Reply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        response = _pool().request("POST", url, body=body, headers=signed_headers(secret, body))
    except urllib3.exceptions.HTTPError as exc:
        raise Unreachable(type(exc).__name__) from exc
    try:
        # The same strict, depth-bounded parser as for requests: a partner's answer is outside input
        # too (json.loads would recurse on deep nesting and accept lone surrogates).
        parsed = parse_json(response.data) if response.data else None
    except errors.InvalidRequest:
        parsed = None
    return Reply(response.status, parsed)
