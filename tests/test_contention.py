"""Contention (issue 9 item 6): no item every code request writes, TransactionConflict retried with jitter
and never a 500, and per-IP limits generous enough for carrier-grade NAT.

moto never cancels a transaction for a conflict, so the tests make its DynamoDB do what real DynamoDB does
under load: cancel TransactWriteItems with reason TransactionConflict. Everything of ours runs as deployed.
"""
from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pytest
import requests
import time_machine
from moto.dynamodb.exceptions import TransactionCanceledException
from moto.dynamodb.models import DynamoDBBackend
from pynamodb.exceptions import CancellationReason, TransactWriteError, VerboseClientError

from chalicelib import errors
from chalicelib.throttle import ConflictRetry
from tests.conftest import API_PORT, post_json
from tests.helpers import aws, error_code, latest_code, request_code, submit, wait_finished

if TYPE_CHECKING:
    from chalice.test import Client

    from local.stack import LocalStack

START = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def conflicts() -> Iterator[Callable[[Callable[[int, int], bool]], None]]:
    """conflicts(rule): the n-th TransactWriteItems (from 0), of k items, is cancelled for a conflict
    if rule(n, k)."""
    original = DynamoDBBackend.transact_write_items
    counter = itertools.count()
    lock = threading.Lock()
    state: dict[str, Callable[[int, int], bool]] = {"rule": lambda n, k: False}

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        with lock:
            conflict = state["rule"](next(counter), len(transact_items))
        if conflict:
            # The last item conflicts (in a code request: the channel counter); the others were not evaluated.
            reasons = [(None, None, None)] * (len(transact_items) - 1)
            raise TransactionCanceledException([*reasons, ("TransactionConflict", "Transaction is ongoing", None)])
        original(self, transact_items)

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]
    try:
        yield lambda rule: state.update(rule=rule)
    finally:
        DynamoDBBackend.transact_write_items = original  # type: ignore[method-assign]


def throttle_keys(stack: Any) -> dict[str, int]:
    items = aws("dynamodb").scan(TableName=stack.env["THROTTLE_TABLE"])["Items"]
    return {item["key"]["S"]: int(item.get("hits", {"N": "0"})["N"]) for item in items}


# -- sharding ---------------------------------------------------------------------------------------
def test_code_requests_in_one_second_spread_the_channel_count_over_shards(stack: LocalStack, api: Client,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.config import settings

    monkeypatch.setenv("SMS_CODES_PER_SECOND", "1000")  # room in every shard: this test counts, not refuses
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    phones = [f"139{n:08d}" for n in range(30)]
    with time_machine.travel(START, tick=False):
        for phone in phones:
            assert request_code(api, phone).status_code == 202
    second = int(START.timestamp())
    channel = {k: v for k, v in throttle_keys(stack).items() if k.startswith("sms-rate#")}
    assert f"sms-rate#{second}" not in channel  # no single item every request writes
    shards = {int(k.rsplit("#", 1)[1]) for k in channel}
    assert all(k.startswith(f"sms-rate#{second}#") for k in channel) and shards <= set(range(10))
    assert len(shards) >= 4 and sum(channel.values()) == len(phones)


def test_each_shard_takes_its_share_of_the_channel_rate(stack: LocalStack, api: Client,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.config import settings

    monkeypatch.setenv("SMS_CODES_PER_SECOND", "20")
    monkeypatch.setenv("SMS_RATE_SHARDS", "4")
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    with time_machine.travel(START, tick=False):
        statuses = [request_code(api, f"139{n:08d}").status_code for n in range(40)]
    assert statuses.count(202) <= 20 and set(statuses) <= {202, 503}
    assert all(hits <= 5 for key, hits in throttle_keys(stack).items() if key.startswith("sms-rate#"))


# -- conflicts ----------------------------------------------------------------------------------
@pytest.mark.routes_only
@pytest.mark.parametrize("conflicting_tries, status", [(1, 202), (3, 202), (4, 503), (50, 503)])
def test_a_code_request_cancelled_by_conflicts_is_retried_then_busy_never_a_500(
        stack: LocalStack, api: Client, conflicts: Callable[[Callable[[int, int], bool]], None], conflicting_tries: int,
        status: int) -> None:
    conflicts(lambda n, _: n < conflicting_tries)
    response = request_code(api, "13900001111")
    assert response.status_code == status, response.body
    if status == 503:
        assert error_code(response) == "service_busy" and response.headers["Retry-After"] == "1"
        assert stack.read_outbox() == []  # no code was stored, none was sent
    else:
        assert len(stack.read_outbox()) == 1


@pytest.mark.routes_only
@pytest.mark.parametrize("conflicting_tries, status", [(3, 202), (4, 503)])
def test_a_query_cancelled_by_conflicts_is_retried_then_busy_never_a_500(
        stack: LocalStack, api: Client, conflicts: Callable[[Callable[[int, int], bool]], None], conflicting_tries: int,
        status: int) -> None:
    phone = "13900001111"
    assert request_code(api, phone).status_code == 202
    intakes = itertools.count()
    # Only the intake transaction (code, 24 h lock, record: 3 items) conflicts; the per-IP count does not.
    conflicts(lambda n, items: items == 3 and next(intakes) < conflicting_tries)
    response = post_json(api, "/v1/queries", {"phone": phone, "id_last6": "010203", "code": latest_code(stack, phone)})
    assert response.status_code == status, response.body
    if status == 503:
        assert error_code(response) == "service_busy"
        assert aws("dynamodb").scan(TableName=stack.env["QUERIES_TABLE"])["Items"] == []


@pytest.mark.parametrize("conflicting_tries, status", [(3, 202), (4, 503)])
def test_a_dispute_cancelled_by_conflicts_is_retried_then_busy_never_a_500(
        stack: LocalStack, api: Client, conflicts: Callable[[Callable[[int, int], bool]], None],
        monkeypatch: pytest.MonkeyPatch, conflicting_tries: int, status: int) -> None:
    # GIVEN a reply that listed 腾讯 accounts (fixture: 13812345678 / 12345X has 2 there)
    from chalicelib.config import settings

    monkeypatch.setenv("CODE_RESEND_SECONDS", "0")  # the dispute's code right after the query's
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    app_module.dispute_intake.cache_clear()
    phone = "13812345678"
    query = submit(api, stack, phone, "12345X")
    assert query.status_code == 202 and stack.pump_once() == 1
    assert wait_finished(stack, query.json_body["query_id"])["status"] == "SUCCEEDED"
    assert request_code(api, phone).status_code == 202
    # WHEN the intake transaction (code, open-dispute lock, day count, record: 4 items) keeps conflicting
    intakes = itertools.count()
    conflicts(lambda n, items: items == 4 and next(intakes) < conflicting_tries)
    response = post_json(api, "/v1/disputes", {"phone": phone, "code": latest_code(stack, phone), "company": "tencent"})
    # THEN it is retried CONFLICT_RETRIES (3) times, then 503: never a 500, nothing half-written
    assert response.status_code == status, response.body
    disputes = aws("dynamodb").scan(TableName=stack.env["DISPUTES_TABLE"])["Items"]
    if status == 503:
        assert error_code(response) == "service_busy" and disputes == []
    else:
        assert next(intakes) == conflicting_tries + 1 and len(disputes) == 1


def test_concurrent_code_requests_under_conflicts_are_all_answered_202_429_or_503(
        stack: LocalStack, conflicts: Callable[[Callable[[int, int], bool]], None]) -> None:
    conflicts(lambda n, _: n % 3 != 2)  # two of every three transactions are cancelled, across all requests
    phones = [f"137{n:08d}" for n in range(24)] * 2  # the repeats hit the 60 s resend lock: 429

    def post(phone: str) -> int:
        response = requests.post(f"http://127.0.0.1:{API_PORT}/v1/verification-codes", json={"phone": phone},
                                 timeout=30)
        body = response.json()
        if response.status_code >= 400:
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        return response.status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(post, phones))
    assert set(statuses) <= {202, 429, 503}, statuses
    assert 202 in statuses


# -- the retry policy itself ----------------------------------------------------------------------
def _cancelled(code: str) -> TransactWriteError:
    cause = VerboseClientError({"Error": {"Code": "TransactionCanceledException", "Message": code}},
                               "TransactWriteItems", cancellation_reasons=[None, CancellationReason(code=code)])
    return TransactWriteError("cancelled", cause=cause)


def test_conflicts_are_retried_with_growing_random_pauses_then_busy() -> None:
    pauses: list[float] = []
    attempts = itertools.count(1)

    def write() -> None:
        next(attempts)
        raise _cancelled("TransactionConflict")

    with pytest.raises(errors.ServiceBusy) as busy:
        ConflictRetry(3, base_delay=0.1, sleep=pauses.append).run(write)
    assert next(attempts) == 5  # the first try and 3 retries
    assert len(pauses) == 3 and all(0 <= p <= 0.1 * 2 ** i for i, p in enumerate(pauses))
    assert busy.value.retry_after == 1


def test_a_cancellation_that_is_not_a_conflict_is_not_retried() -> None:
    pauses: list[float] = []

    def write() -> None:
        raise _cancelled("ValidationError")

    with pytest.raises(TransactWriteError):
        ConflictRetry(3, sleep=pauses.append).run(write)
    assert pauses == []


def test_a_write_that_succeeds_after_a_conflict_returns_its_result() -> None:
    outcomes: Iterator[TransactWriteError | str] = iter([_cancelled("TransactionConflict"), "done"])

    def write() -> str:
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert ConflictRetry(3, sleep=lambda _: None).run(write) == "done"


# -- carrier-grade NAT ------------------------------------------------------------------------------
def test_per_ip_limits_default_to_hundreds_an_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.config import settings

    for name in ("CODE_IP_HOURLY_LIMIT", "QUERY_IP_HOURLY_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    settings.cache_clear()
    try:
        assert settings().code_ip_hourly_limit >= 300 and settings().query_ip_hourly_limit >= 300
    finally:
        settings.cache_clear()


def test_one_address_shared_by_many_subscribers_gets_more_than_the_old_30_codes_an_hour(stack: LocalStack,
                                                                                        api: Client) -> None:
    with time_machine.travel(START, tick=False) as traveller:
        for n in range(40):
            assert request_code(api, f"139{n:08d}").status_code == 202, n
            traveller.shift(1)  # one a second: under the SMS channel's rate
    assert json.dumps(throttle_keys(stack)).count("code-ip#") == 1
