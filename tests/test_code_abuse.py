"""Nobody can kill, replace or drain someone else's codes (SPEC §3), tried as a stranger would: over real
HTTP to the local API, which gives each request its socket address as the source IP (SPEC §7), so a
stranger speaks from 127.0.0.2 and the owner from 127.0.0.1."""
from __future__ import annotations

import dataclasses
import datetime as dt
import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import time_machine

from local.altcha import solve
from local.stack import LocalStack, StackOptions
from tests import helpers
from tests.conftest import BASE_OPTIONS
from tests.helpers import latest_code

OWNER, STRANGER = "127.0.0.1", "127.0.0.2"
PHONE, ID6 = "13900001111", "010203"
START = dt.datetime(2026, 11, 28, 2, 0, tzinfo=dt.UTC)  # 10:00 in Beijing
# Codes are asked, tried and spent on the routes alone: no pollers, no deadline timer (tests/conftest.py, routes_only).
pytestmark = pytest.mark.routes_only


@pytest.fixture
def stack_options() -> StackOptions:
    # The deployed proof-of-work thresholds (2 codes per number a day, 20 per client an hour).
    return dataclasses.replace(BASE_OPTIONS, code_free_per_number=2, code_free_per_client=20)


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: dict[str, Any]) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def error(self) -> str:
        return str(self.body["error"]["code"])


def post_from(stack: Any, source: str, path: str, body: dict[str, Any],
              headers: dict[str, str] | None = None) -> Answer:
    return Answer(*helpers.post_from(stack, source, path, body, headers))


def ask_code(stack: Any, source: str, phone: str = PHONE, **extra: Any) -> Answer:
    return post_from(stack, source, "/v1/verification-codes", {"phone": phone, **extra})


def ask_code_paying(stack: Any, source: str) -> Answer:
    """A code request that solves the challenge a 428 asks for, as a determined stranger would."""
    answer = ask_code(stack, source)
    if answer.status == 428:
        answer = ask_code(stack, source, altcha=solve(answer.body["challenge"]))
    return answer


def query(stack: Any, source: str, code: str, headers: dict[str, str] | None = None) -> Answer:
    return post_from(stack, source, "/v1/queries", {"phone": PHONE, "id_last6": ID6, "code": code}, headers)


def other(code: str, n: int = 1) -> str:
    return f"{(int(code) + n) % 1_000_000:06d}"


def owners_code(stack: Any) -> str:
    assert ask_code(stack, OWNER).status == 202
    return latest_code(stack, PHONE)


def guess_wrong(stack: Any, source: str, code: str, times: int, headers: dict[str, str] | None = None) -> None:
    for n in range(1, times + 1):
        answer = query(stack, source, other(code, n), headers)
        assert (answer.status, answer.error) == (403, "wrong_code")


# -- wrong tries: per client, and in all ---------------------------------------------------------
def test_five_wrong_tries_from_another_client_leave_the_owners_code_working(stack: LocalStack) -> None:
    code = owners_code(stack)
    guess_wrong(stack, STRANGER, code, 5)
    assert query(stack, OWNER, code).status == 202


def test_a_client_refused_after_five_wrong_tries_is_refused_even_the_right_code(stack: LocalStack) -> None:
    code = owners_code(stack)
    guess_wrong(stack, STRANGER, code, 5)
    assert query(stack, STRANGER, code).error == "wrong_code"  # refused, and not counted again
    assert query(stack, OWNER, code).status == 202


def test_a_refused_client_may_try_again_once_a_new_code_is_sent(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        code = owners_code(stack)
        guess_wrong(stack, OWNER, code, 5)
        assert query(stack, OWNER, code).error == "wrong_code"
        traveller.shift(61)
        assert query(stack, OWNER, owners_code(stack)).status == 202


@pytest.mark.parametrize("wrong_tries, then", [(19, 202), (20, 403)])
def test_twenty_wrong_tries_from_anywhere_cancel_every_live_code_of_the_number(stack: LocalStack, wrong_tries: int,
                                                                               then: int) -> None:
    code = owners_code(stack)
    clients = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
    for n, client in enumerate(clients):
        guess_wrong(stack, client, other(code, 10 * n), min(5, wrong_tries - 5 * n))
    assert query(stack, OWNER, code).status == then


def test_a_strangers_code_request_for_the_number_leaves_the_owners_earlier_code_valid(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        code = owners_code(stack)
        traveller.shift(61)
        assert ask_code(stack, STRANGER).status == 202
        assert query(stack, OWNER, code).status == 202


def test_a_strangers_code_requests_until_three_are_live_leave_the_owners_code_valid(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        code = owners_code(stack)
        answers = []
        for _ in range(3):
            traveller.shift(61)
            answers.append(ask_code_paying(stack, STRANGER))
        assert [a.status for a in answers] == [202, 202, 429]  # three live: refused, none pushed out
        assert query(stack, OWNER, code).status == 202


def test_a_strangers_own_codes_lift_only_its_own_refusal_and_never_cancel_the_owners_code(stack: LocalStack) -> None:
    # GIVEN the owner's code and two strangers refused after five wrong tries each
    with time_machine.travel(START, tick=True) as traveller:
        code = owners_code(stack)
        guess_wrong(stack, "127.0.0.2", code, 5)
        guess_wrong(stack, "127.0.0.3", other(code, 10), 5)
        # WHEN one of them asks for codes of its own (each lifts its refusal) and guesses five more each time
        for round_ in (1, 2):
            traveller.shift(61)
            assert ask_code_paying(stack, "127.0.0.2").status == 202
            guess_wrong(stack, "127.0.0.2", other(code, 20 * round_), 5)
        # THEN the other stranger is still refused, the first one's refusal was lifted once only (15 wrong
        # tries compared in all, not 20), and the owner's code works
        assert query(stack, "127.0.0.3", code).error == "wrong_code"
        assert [int(item["wrong"]) for item in codes_items(stack)] == [15]
        assert query(stack, OWNER, code).status == 202


def codes_items(stack: LocalStack) -> list[dict[str, Any]]:
    import boto3

    return list(boto3.resource("dynamodb").Table(stack.env["CODES_TABLE"]).scan()["Items"])


def test_simultaneous_guesses_from_one_client_compare_at_most_five(stack: LocalStack) -> None:
    import boto3

    from chalicelib.config import settings

    code = owners_code(stack)
    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(lambda n: query(stack, STRANGER, other(code, n)), range(1, 31)))
    assert {(a.status, a.error) for a in answers} == {(403, "wrong_code")}
    # Each compared guess took one of the client's five tries first, atomically; the rest were refused unseen.
    throttle = boto3.resource("dynamodb").Table(settings().throttle_table)
    tries = [item for item in throttle.scan()["Items"] if str(item["key"]).startswith("code-wrong#")]
    assert [int(item["hits"]) for item in tries] == [5]
    assert [int(item["wrong"]) for item in codes_items(stack)] == [5]
    assert query(stack, OWNER, code).status == 202


@pytest.mark.parametrize("single_item_conflicts, status", [(3, 403), (4, 503)])
def test_a_wrong_try_meeting_a_transaction_on_its_item_is_retried_then_busy_never_a_500(
        stack: LocalStack, single_item_conflicts: int, status: int) -> None:
    from moto.core.exceptions import JsonRESTError
    from moto.dynamodb.responses import DynamoHandler

    code = owners_code(stack)
    original = DynamoHandler.update_item
    left = [single_item_conflicts]

    # moto never refuses a single-item write for a transaction holding its item; DynamoDB does, and botocore
    # does not retry TransactionConflictException. (The UpdateItem action only: transactions are not touched.)
    def update_item(self: DynamoHandler) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise JsonRESTError("TransactionConflictException", "Transaction is ongoing for the item")
        return original(self)

    DynamoHandler.update_item = update_item  # type: ignore[method-assign]
    try:
        answer = query(stack, STRANGER, other(code))
    finally:
        DynamoHandler.update_item = original  # type: ignore[method-assign]
    assert (answer.status, answer.error) == (status, "wrong_code" if status == 403 else "service_busy")
    assert query(stack, OWNER, code).status == 202


def test_a_forwarded_for_header_does_not_make_one_client_many(stack: LocalStack) -> None:
    code = owners_code(stack)
    for n in range(5):  # each try claims another origin: the API reads the socket's address, not the header
        guess_wrong(stack, STRANGER, other(code, n + 1), 1, {"X-Forwarded-For": f"10.0.0.{n}"})
    assert query(stack, STRANGER, code, {"X-Forwarded-For": "10.0.0.99"}).error == "wrong_code"
    assert query(stack, OWNER, code).status == 202


# -- proof of work before an SMS -------------------------------------------------------------------
def use_the_free_codes(stack: Any, traveller: Any) -> None:
    for _ in range(2):  # CODE_FREE_PER_NUMBER
        assert ask_code(stack, OWNER).status == 202
        traveller.shift(301)  # expired: the codes these tests ask for next never meet three live ones


def challenge_of(answer: Answer) -> dict[str, Any]:
    assert (answer.status, answer.error) == (428, "challenge_required"), answer.body
    challenge = answer.body["challenge"]
    assert set(challenge) == {"algorithm", "challenge", "maxnumber", "salt", "signature"}
    return dict(challenge)


def test_the_third_code_of_a_day_needs_a_solution_and_a_solution_is_accepted_once(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        solution = solve(challenge_of(ask_code(stack, OWNER)))
        assert ask_code(stack, OWNER, altcha=solution).status == 202
        traveller.shift(61)
        challenge_of(ask_code(stack, OWNER, altcha=solution))  # reused: a fresh challenge instead
        assert ask_code(stack, OWNER, altcha=solve(challenge_of(ask_code(stack, OWNER)))).status == 202
    assert len(stack.read_outbox()) == 4


def test_a_solution_is_spent_only_by_a_request_that_sends_a_code(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        challenge_of(ask_code(stack, OWNER))
        traveller.shift(61)
        solution = solve(challenge_of(ask_code(stack, OWNER)))  # still needed: a 428 sends nothing
        assert ask_code(stack, OWNER, altcha=solution).status == 202
        # Checks in SPEC §3's order: a valid solution, then the 60 s gap refuses; the solution is not spent.
        solution = solve(challenge_of(ask_code(stack, OWNER)))
        refused = ask_code(stack, OWNER, altcha=solution)
        assert (refused.status, refused.error) == (429, "too_many_requests")
        traveller.shift(61)
        assert ask_code(stack, OWNER, altcha=solution).status == 202


def test_a_solution_whose_code_sms_fails_is_given_back(stack: LocalStack) -> None:
    from botocore.exceptions import ClientError

    from chalicelib import clients

    def throttled_once(**_: Any) -> None:
        clients.client("sns").meta.events.unregister("before-call.sns.Publish", throttled_once)
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "Publish")

    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        solution = solve(challenge_of(ask_code(stack, OWNER)))
        clients.client("sns").meta.events.register("before-call.sns.Publish", throttled_once)
        assert (ask_code(stack, OWNER, altcha=solution).status) == 503  # no code sent: the solution is not spent
        traveller.shift(61)
        assert ask_code(stack, OWNER, altcha=solution).status == 202


def test_beyond_twenty_code_requests_from_one_client_in_an_hour_a_challenge_is_needed(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True):
        for n in range(20):
            assert ask_code(stack, "127.0.0.3", phone=f"1390000{n:04d}").status == 202
        challenge_of(ask_code(stack, "127.0.0.3", phone="13900009999"))
        assert ask_code(stack, "127.0.0.4", phone="13900009999").status == 202  # another client is free


def test_a_burst_of_code_requests_read_as_free_cannot_pass_the_free_threshold(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True):
        for n in range(19):
            assert ask_code(stack, "127.0.0.3", phone=f"1390000{n:04d}").status == 202
        # one free code left to this client: twenty requests at once, each would read 19 of 20 before writing
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda n: ask_code(stack, "127.0.0.3", phone=f"1391000{n:04d}"), range(20)))
    assert sorted(a.status for a in answers) == [202] + [428] * 19
    assert {a.error for a in answers if a.status == 428} == {"challenge_required"}


def test_an_expired_solution_gets_a_fresh_challenge(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        solution = solve(challenge_of(ask_code(stack, OWNER)))
        traveller.shift(301)
        challenge_of(ask_code(stack, OWNER, altcha=solution))


@pytest.mark.parametrize("altcha", [12, None, "", "garbage", {"number": 1}, ["a"], "QUFBQQ=="])
def test_anything_but_a_solution_is_428_with_a_challenge_never_an_error(stack: LocalStack, altcha: Any) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        challenge_of(ask_code(stack, OWNER, altcha=altcha))


def test_get_challenges_answers_a_challenge_a_code_request_accepts(stack: LocalStack) -> None:
    with time_machine.travel(START, tick=True) as traveller:
        use_the_free_codes(stack, traveller)
        conn = http.client.HTTPConnection("127.0.0.1", stack.options.api_port, timeout=30)
        conn.request("GET", "/v1/challenges")
        response = conn.getresponse()
        challenge = json.loads(response.read())
        assert response.status == 200
        assert ask_code(stack, OWNER, altcha=solve(challenge)).status == 202


# -- the SMS channel refuses only above its rate -----------------------------------------------------
@pytest.mark.parametrize("stack_options", [dataclasses.replace(BASE_OPTIONS)])
def test_sixteen_concurrent_code_requests_at_80_percent_of_the_channel_rate_get_no_503(
        stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib.config import settings

    monkeypatch.setenv("SMS_CODES_PER_SECOND", "20")  # 10 shards of 2: a random pick alone refused ~1 in 3
    settings.cache_clear()
    import app as app_module

    app_module.code_service.cache_clear()
    phones = [f"1370000{n:04d}" for n in range(16)]
    with time_machine.travel(START, tick=False), ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda phone: ask_code(stack, OWNER, phone=phone), phones))
    assert [a.status for a in answers] == [202] * 16
    assert {m["phone"] for m in stack.read_outbox()} == set(phones)


def test_an_ipv6_clients_wrong_tries_and_their_lift_are_counted_by_its_48(stack: LocalStack) -> None:
    # The API hands the code service an IPv6 client as its /64 (chalicelib/api/views.client_of); the local API
    # listens on IPv4 loopback only, so this test speaks to the service as the API would.
    from chalicelib import errors

    codes = stack.app_module.code_service()
    line_a, line_b = "2001:db8:1:2::/64", "2001:db8:1:3::/64"  # two /64s of one /48
    with time_machine.travel(START, tick=True) as traveller:
        code = owners_code(stack)
        for n in range(5):
            with pytest.raises(errors.WrongCode):
                codes.check(PHONE, other(code, n + 1), line_a if n % 2 else line_b)
        with pytest.raises(errors.WrongCode):  # refused: the /48 has had its five
            codes.check(PHONE, code, line_a)
        traveller.shift(61)
        codes.issue(PHONE, line_b, altcha=solve(codes.challenge()))  # a code at the /48's own request lifts it
        assert codes.check(PHONE, code, line_a).phone_key
