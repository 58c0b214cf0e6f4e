"""A partner that fails the same fifth of its lookups for ever (issue 14 item 6, SPEC §4 circuit rule).

The simulators' `partial` mode answers 503 to every request of a fixed 20 % of the lookups (by their id's
hash) and calls back for the others. The circuit judges the partner's health: it keeps answering, so the
circuit stays closed, the 80 % are answered and only the failing lookups' partners are 暂未返回.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from chalicelib import telemetry
from local import simulators
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS
from tests.helpers import COMPANIES, bundled, replies_to, submit, wait_closed

# Every company partial: a run without a failing lookup is all but impossible (0.8^144), and most queries
# carry one, so failures keep coming all through the traffic.
ALL_PARTIAL = ",".join(f"{company}=partial" for company in COMPANIES)
# First ten queries at once: their failing lookups fail together and again on their retries, a run of
# failures with no answer in between (a circuit counting failures across lookups latched open on that).
BURST = 10
# Then the traffic goes on: the circuit opens only after 30 s of failures with no answer, so "stays closed"
# means something only if the failures last longer than that. Eight more queries 4 s apart put failures from
# 0 s to about 38 s (the last ones' retries at +2 s and +6 s), each new query's answered lookups resetting the
# clock; for a partner to go 30 s unanswered its lookups of seven queries in a row would all have to fail.
PACED = 8
SPACING_SECONDS = 4.0
# From acceptance. Long enough for the slowest callback (jd: 3 s, partners.csv) and for a failing lookup's
# retries (2 s, then 4 s of backoff, as deployed: chalicelib/engine/tasks.py), with room for a loaded machine:
# the burst's lookups are sent 5-7 s after their queries were accepted on an idle one (ten submissions, then ten
# fan-outs at once), over 10 s on CI's busy cores, and each must still be retried before its deadline: at 20 s a
# burst lookup was sent too late for its retry under three workers, four, and branch coverage. Not longer either:
# the failing lookups' retries would then outlast the answered traffic by 30 s, and the circuit rightly opens (at
# 45 s it did). Twice in a day's runs on a loaded machine a reply sent at its deadline missed a partner asked
# once (not one of the failing fifth); the likely cause, two callbacks at once reading each other's request in
# the local server, is fixed (local/http.py). Should it recur, the assertion prints that query's lookups.
DEADLINE_SECONDS = 30


def options(**changes: Any) -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, **changes})


def company_names() -> dict[str, str]:
    return {entry["id"]: entry["name"] for entry in bundled("companies")}


def active_subscribers(count: int) -> list[tuple[str, str]]:
    """(phone, id_last6) of `count` active fixture subscribers, those with the most accounts first."""
    accounts = simulators.load_accounts()
    active = [s for s in simulators.load_subscribers().values() if s.status == "active"]
    active.sort(key=lambda s: -sum(accounts.get((s.phone, company)) for company in COMPANIES))
    return [(s.phone, s.id_last6) for s in active[:count]]


def result_sms(phone: str, answers: dict[str, int | None]) -> str:
    """The SPEC §5 result text: each company in registry order, None for 暂未返回."""
    names = company_names()
    parts = [f"{names[c]}暂未返回" if answers[c] is None else f"{names[c]}{answers[c]}个" for c in COMPANIES]
    total = sum(n for n in answers.values() if n is not None)
    return (f"【一证通查】您的手机号{phone[:3]}****{phone[-4:]}关联的互联网账号：{'，'.join(parts)}。"
            f"已返回企业共{total}个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")


def lookups_of(query_id: str) -> dict[str, tuple[Any, ...]]:
    """What a failed assertion shows of a query's lookups: company -> (state, attempts, requested, answered,
    deadline), so a late request or answer can be told from a lost one."""
    from chalicelib.storage.models import Lookup

    return {lookup.company: (lookup.state, lookup.attempts, lookup.requested_at, lookup.answered_at,
                             lookup.deadline_at) for lookup in Lookup.scan(Lookup.query_id == query_id)}


def test_partial_mode_fails_the_same_fifth_of_tasks_on_every_try() -> None:
    ids = [f"{n:032x}" for n in range(2000)]
    failing = {task_id for task_id in ids if simulators.partial_fails(task_id)}
    assert 0.17 < len(failing) / len(ids) < 0.23
    assert failing == {task_id for task_id in ids if simulators.partial_fails(task_id)}  # the same ones again

    answered = threading.Event()
    bad, good = sorted(failing)[0], next(i for i in ids if i not in failing)
    for tries in (1, 2, 3):  # however often it is asked
        assert simulators.answer_per_mode("partial", tries, 2, {"lookup_id": bad}, {}, answered.set,
                                          delay=0, task_id=bad)[0] == 503
    assert not answered.is_set()
    assert simulators.answer_per_mode("partial", 1, 2, {"lookup_id": good}, {}, answered.set,
                                      delay=0, task_id=good) == (202, None)
    assert answered.wait(5)  # the others are answered by callback


@pytest.mark.parametrize("stack_options", [options(partner_modes=ALL_PARTIAL, deadline_seconds=DEADLINE_SECONDS,
                                                   first_backoff_seconds=2)])
def test_partner_failing_the_same_20_percent_of_lookups_keeps_its_circuit_closed_and_answers_the_rest(
        stack: LocalStack, api: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN every partner fails a fixed fifth of its lookups on every try and answers the rest,
    WHEN ten queries come at once and eight more 4 s apart (failures for longer than the circuit's 30 s window),
    THEN no circuit ever opens, each answered lookup's count is in its query's one reply, and each failing
    lookup, retried and failed again, is 暂未返回 in a reply sent at its deadline."""
    opened: list[dict[str, Any]] = []
    count = telemetry.count

    def spy(name: str, *args: Any, **dimensions: Any) -> None:  # the metric the circuit emits when it opens
        if name == "CircuitOpened":
            opened.append(dimensions)
        count(name, *args, **dimensions)

    monkeypatch.setattr(telemetry, "count", spy)
    subscribers = active_subscribers(BURST + PACED)

    def accepted(phone: str, id_last6: str) -> str:
        response = submit(api, stack, phone, id_last6)
        assert response.status_code == 202, response.body
        return str(response.json_body["query_id"])

    # WHEN: a burst of concurrent queries, then more paced so the traffic outlasts the circuit's 30 s window.
    started = time.monotonic()
    query_ids = {phone: accepted(phone, id_last6) for phone, id_last6 in subscribers[:BURST]}
    while stack.pump_once():
        pass
    for n, (phone, id_last6) in enumerate(subscribers[BURST:], start=1):
        time.sleep(max(0.0, started + n * SPACING_SECONDS - time.monotonic()))
        query_ids[phone] = accepted(phone, id_last6)
        assert stack.pump_once() == 1
    records = {phone: wait_closed(stack, query_id, timeout=60) for phone, query_id in query_ids.items()}
    took = time.monotonic() - started

    # THEN: which lookups are the failing fifth is the simulators' rule on the ids the partners saw.
    desk = stack.app_module.lookups()
    lookup_ids = {(phone, c): desk.lookup_id(query_id, c) for phone, query_id in query_ids.items() for c in COMPANIES}
    failing = {key for key, lookup_id in lookup_ids.items() if simulators.partial_fails(lookup_id)}
    assert 0 < len(failing) < len(lookup_ids)
    tries = {key: sum(r["lookup_id"] == lookup_id for r in stack.partners[key[1]].requests)
             for key, lookup_id in lookup_ids.items()}
    assert all(tries[key] >= 2 for key in failing), tries  # retried, and failed again
    assert all(n == 1 for key, n in tries.items() if key not in failing), tries  # answered at the first request

    accounts = simulators.load_accounts()
    for phone, query_id in query_ids.items():
        answers = {c: None if (phone, c) in failing else accounts.get((phone, c)) for c in COMPANIES}
        assert replies_to(stack, phone) == [result_sms(phone, answers)], f"{query_id}: {lookups_of(query_id)}"
        assert records[phone]["status"] == "replied"
        if None in answers.values():  # a failing lookup holds its query until the deadline, not after it
            assert int(records[phone]["deadline_at"]) - 1 <= int(records[phone]["updated_at"])

    from chalicelib.partners.circuit import Circuits

    assert opened == []
    assert not any(state.is_open for state in Circuits(5, 60).states(COMPANIES).values())
    assert took < PACED * SPACING_SECONDS + DEADLINE_SECONDS + 20
