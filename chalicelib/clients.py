"""Lazy, cached boto3 clients: created on first use, once per Lambda container.

Never at import time (cold start, and tests must start moto first), never per call.
"""
from __future__ import annotations

import functools
import threading
from typing import Any

# One session for every client: its loader reads each service model and the endpoint rules from disk
# once (a fresh session per client parsed them again, ~0.13 s a client). A session is not thread-safe,
# and the fan-out's threads may ask for their first client together: creation goes one at a time.
_creating = threading.Lock()


@functools.cache
def _loader() -> Any:
    """botocore's reader of its JSON files (service models, endpoint rules), one per process: each botocore
    session otherwise has its own and parses them again, 50-100 ms of CPU a session."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def botocore_session() -> Any:
    """A new botocore session that reads botocore's files through the process's one loader. PynamoDB makes one
    per model (and per thread): chalicelib/storage/models.py has it make them here."""
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _loader())
    return session


@functools.cache
def _session() -> Any:
    import boto3  # heavy: imported on first use only

    return boto3.session.Session(botocore_session=botocore_session())


_clients: dict[str, Any] = {}


def client(service: str) -> Any:
    """The one client of `service` in this process. Checked again under the lock: two threads asking for
    the first one together (a fan-out, the local stack's pumps) must get the same client, not one each."""
    found = _clients.get(service)
    if found is None:
        with _creating:
            found = _clients.get(service)
            if found is None:
                found = _clients[service] = _session().client(service)
    return found


_secrets: list[Any] = []  # the one Secrets Manager provider, once made


def secrets() -> Any:
    """Powertools' Secrets Manager provider (and its cache) on this process's client. Its default provider,
    behind `parameters.get_secret`, builds a boto3 Session of its own, which reads botocore's endpoint rules
    and the service model from disk again: tens of milliseconds of a cold start, for a second copy."""
    if not _secrets:
        from aws_lambda_powertools.utilities.parameters import SecretsProvider

        provider = SecretsProvider(boto3_client=client("secretsmanager"))
        with _creating:
            if not _secrets:
                _secrets.append(provider)
    return _secrets[0]


def reset() -> None:
    """Forget cached clients and the secrets read through them (tests hook events on the clients: each test
    starts with fresh ones); the session and the models it has read stay."""
    with _creating:
        _clients.clear()
        _secrets.clear()
