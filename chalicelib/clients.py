"""Lazy, cached boto3 clients: created on first use, once per Lambda container.

Never at import time (cold start, and tests must start moto first), never per call.
"""
from __future__ import annotations

import functools
from typing import Any


@functools.cache
def client(service: str) -> Any:
    import boto3  # heavy: imported on first use only

    return boto3.session.Session().client(service)


def reset() -> None:
    """Forget cached clients (tests start a fresh moto per test)."""
    client.cache_clear()
