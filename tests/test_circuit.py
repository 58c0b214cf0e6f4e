"""The partner circuit breaker (SPEC §4) on moto, in process, with only the circuits table.

The circuit judges the partner's health, not one request's luck: it opens when the partner has
answered nothing for 30 s while at least 5 transient failures came in. Time is explicit (`now`).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from moto import mock_aws

from chalicelib import telemetry
from chalicelib.partners.circuit import Circuits, CircuitState

PARTNER = "jd"


@dataclass
class Metrics:
    names: list[str] = field(default_factory=list)

    def count(self, name: str, *args: object, **dimensions: str) -> None:
        self.names.append(name)


@pytest.fixture
def circuits() -> Iterator[Circuits]:
    with mock_aws():
        from chalicelib.storage.models import PartnerCircuit

        PartnerCircuit.create_table(wait=False)
        yield Circuits(threshold=5, probe_seconds=60)


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    recorded = Metrics()
    monkeypatch.setattr(telemetry, "count", recorded.count)
    return recorded


def state(circuits: Circuits) -> CircuitState:
    return circuits.states([PARTNER])[PARTNER]


def fail_at(circuits: Circuits, times: list[int]) -> list[bool]:
    return [circuits.failed(PARTNER, now) for now in times]


@pytest.mark.parametrize("times", [
    [1000] * 5,                                # a burst: five at once
    [1000, 1005, 1010, 1020, 1029],            # the fifth 29 s after the first
    [1000 + i for i in range(30)],             # thirty within 29 s: many failures are not enough
])
def test_five_failures_within_30s_of_the_first_keep_it_closed(circuits: Circuits, times: list[int]) -> None:
    assert fail_at(circuits, times) == [False] * len(times)
    assert not state(circuits).is_open
    assert state(circuits).failures == len(times) and state(circuits).failing_since == 1000


@pytest.mark.parametrize(("times", "opened"), [
    ([1000, 1001, 1002, 1003, 1030], [False, False, False, False, True]),   # the fifth at 30 s
    ([1000, 1030, 1031, 1032, 1033], [False, False, False, False, True]),   # 30 s passed, the fifth comes later
    ([1000, 1000, 1000, 1000, 1000, 1029, 1030], [False] * 6 + [True]),     # silent for 30 s, not counted 5
])
def test_opens_after_30s_of_failures_with_at_least_five(circuits: Circuits, metrics: Metrics, times: list[int],
                                                        opened: list[bool]) -> None:
    assert fail_at(circuits, times) == opened
    now = state(circuits)
    assert now.is_open and now.next_probe_at == times[-1] + 60
    assert metrics.names.count("CircuitOpened") == 1


def test_fewer_than_five_failures_never_open_however_long(circuits: Circuits) -> None:
    assert fail_at(circuits, [1000, 1100, 2000, 90000]) == [False] * 4


def test_once_open_every_failure_says_open(circuits: Circuits, metrics: Metrics) -> None:
    fail_at(circuits, [1000] * 4 + [1030])
    assert fail_at(circuits, [1031, 1090, 5000]) == [True] * 3
    assert metrics.names.count("CircuitOpened") == 1


def test_an_answer_resets_the_clock(circuits: Circuits) -> None:
    assert fail_at(circuits, [1000, 1001, 1002, 1003, 1004]) == [False] * 5
    circuits.succeeded(state(circuits), 1020)
    assert state(circuits) == CircuitState(PARTNER)
    # Counted from the first failure after the answer (1025), not from 1000.
    assert fail_at(circuits, [1025, 1026, 1027, 1028, 1040, 1054]) == [False] * 6
    assert fail_at(circuits, [1055]) == [True]


def test_an_answer_closes_an_open_circuit(circuits: Circuits, metrics: Metrics) -> None:
    fail_at(circuits, [1000] * 4 + [1030])
    circuits.succeeded(state(circuits), 1100)  # an answered probe
    assert state(circuits) == CircuitState(PARTNER)
    assert metrics.names.count("CircuitClosed") == 1
    assert fail_at(circuits, [1101] * 5) == [False] * 5  # a new clock: a burst right after does not reopen it


def test_an_answer_from_a_healthy_partner_writes_nothing(circuits: Circuits) -> None:
    from chalicelib.storage.models import PartnerCircuit

    circuits.succeeded(CircuitState(PARTNER), 1000)
    with pytest.raises(PartnerCircuit.DoesNotExist):
        PartnerCircuit.get(PARTNER, consistent_read=True)


@pytest.mark.parametrize("requests_per_second", [1, 10])
def test_partner_failing_20_percent_of_requests_forever_stays_closed(circuits: Circuits,
                                                                     requests_per_second: int) -> None:
    """Every 5th request fails, the others are answered, for 70 s (past the 30 s window twice): never open (on the
    local stack, with a partner in the simulators' `partial` mode: tests/test_partial_partner.py)."""
    opened = []
    for i in range(70 * requests_per_second):
        now = 10_000 + i // requests_per_second
        current = state(circuits)  # as a dispatch reads it before sending
        if i % 5 == 4:
            opened.append(circuits.failed(PARTNER, now))
        else:
            circuits.succeeded(current, now)
    assert opened == [False] * (14 * requests_per_second)
    assert not state(circuits).is_open


@pytest.mark.parametrize("failures_first", [True, False])
def test_partner_failing_every_lookups_first_two_tries_stays_closed_when_third_tries_answer(
        circuits: Circuits, failures_first: bool) -> None:
    """Three lookups start each second; each fails its tries at +0 s and +2 s and is answered at +6 s.
    Interleaved, failures come in runs longer than the threshold (which latched the old consecutive
    count open for good), but the partner answers every second."""
    events: list[tuple[int, bool]] = []  # (time, answered)
    for start in range(10_000, 10_070):  # 70 s of traffic, past the 30 s window twice
        for _ in range(3):
            events += [(start, False), (start + 2, False), (start + 6, True)]
    events.sort(key=lambda event: (event[0], event[1] == failures_first))
    longest = run = 0
    for _, answered in events:
        run = 0 if answered else run + 1
        longest = max(longest, run)
    assert longest >= 5  # the scenario would have opened a consecutive-failure circuit

    opened = []
    for now, answered in events:
        current = state(circuits)
        if answered:
            circuits.succeeded(current, now)
        else:
            opened.append(circuits.failed(PARTNER, now))
    assert not any(opened)
    assert not state(circuits).is_open


def test_only_one_writer_opens_it(circuits: Circuits, metrics: Metrics, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lambdas count the partner's fifth and sixth failures; both decide to open it; the second
    writer finds it open already (conditional write): both answer open, CircuitOpened counted once."""
    fail_at(circuits, [1000] * 4)
    other = Circuits(threshold=5, probe_seconds=60)
    results: list[bool] = []
    decide = Circuits._unhealthy

    def race(self: Circuits, failures: int, failing_since: int, now: int) -> bool:
        if self is circuits:  # between our count and our opening, the other writer counts and opens
            results.append(other.failed(PARTNER, now))
        return decide(self, failures, failing_since, now)

    monkeypatch.setattr(Circuits, "_unhealthy", race)
    results.append(circuits.failed(PARTNER, 1030))
    assert results == [True, True]
    assert metrics.names.count("CircuitOpened") == 1
    assert state(circuits).is_open and state(circuits).failures == 6


def test_an_answer_between_the_count_and_the_opening_keeps_it_closed(circuits: Circuits, metrics: Metrics,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fail_at(circuits, [1000] * 4)
    decide = Circuits._unhealthy

    def answered_meanwhile(self: Circuits, failures: int, failing_since: int, now: int) -> bool:
        circuits.succeeded(state(circuits), now)
        return decide(self, failures, failing_since, now)

    monkeypatch.setattr(Circuits, "_unhealthy", answered_meanwhile)
    assert circuits.failed(PARTNER, 1030) is False
    assert state(circuits) == CircuitState(PARTNER)
    assert "CircuitOpened" not in metrics.names


@pytest.mark.parametrize(("claims", "granted"), [
    ([1030, 1089], [False, False]),                      # the first probe is due a minute after opening
    ([1090, 1090, 1100, 1149], [True, False, False, False]),
    ([1090, 1150, 1150, 1300], [True, True, False, True]),
])
def test_probe_slot_claimed_once_a_minute(circuits: Circuits, claims: list[int], granted: list[bool]) -> None:
    fail_at(circuits, [1000] * 4 + [1030])  # opened at 1030
    assert [circuits.claim_probe(state(circuits), now) for now in claims] == granted


def test_no_probe_slot_while_closed(circuits: Circuits) -> None:
    fail_at(circuits, [1000] * 4)
    assert not circuits.claim_probe(state(circuits), 5000)
