"""chalicelib/clients.py: one client per service in a process, whoever asks first (no AWS call made)."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import clients


@pytest.fixture(autouse=True)
def fresh_clients() -> Iterator[None]:
    clients.reset()
    yield
    clients.reset()


def test_threads_asking_for_the_first_client_together_get_the_same_one() -> None:
    """The local stack's pumps and a test (or a fan-out's threads) ask at once: an event a test hooks on its
    client must be on the client everyone else then uses."""
    start = threading.Barrier(8)
    got: list[Any] = []

    def ask() -> None:
        start.wait()
        got.append(clients.client("sqs"))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 8 and all(c is got[0] for c in got) and clients.client("sqs") is got[0]


def test_reset_gives_a_new_client() -> None:
    first = clients.client("sqs")
    clients.reset()
    assert clients.client("sqs") is not first


def test_secrets_are_read_through_the_process_client_until_a_reset() -> None:
    """Powertools' default provider would build a second boto3 Session (botocore's endpoint rules read again)."""
    provider = clients.secrets()
    assert provider.client is clients.client("secretsmanager")
    assert clients.secrets() is provider
    clients.reset()
    assert clients.secrets() is not provider and clients.secrets().client is clients.client("secretsmanager")


def test_the_app_s_and_every_model_s_botocore_sessions_read_botocore_s_files_through_one_loader() -> None:
    """Each botocore session parses botocore's endpoint rules and service models again unless they share a loader:
    PynamoDB makes a session per model, so a cold container paid that once per table it touched."""
    from chalicelib.storage.models import Lookup, QueryRecord

    sessions = [model._get_connection().connection.session for model in (QueryRecord, Lookup)]
    sessions.append(clients._session()._session)  # the botocore session under the app's boto3 clients
    loader = sessions[0].get_component("data_loader")
    assert all(session.get_component("data_loader") is loader for session in sessions)
    assert sessions[0] is not sessions[1]  # PynamoDB still makes its own sessions: only their loader is shared
