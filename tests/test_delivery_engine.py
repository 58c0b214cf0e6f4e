"""The per-partner delivery loop (chalicelib/engine/delivery.py) over any kind of task (SPEC §4).

In process: the circuits table on moto, the tasks of two kinds in memory (the loop only loads, lists,
sends and expires them through their TaskKind), a fake clock that moves only when the loop waits, and
one partner thread so the order of partners is the order of the run.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import pytest
from moto import mock_aws

from chalicelib.config import settings
from chalicelib.contracts import QueueMessage, TaskState, TaskType
from chalicelib.engine.delivery import Delivery, TaskKind
from chalicelib.engine.tasks import backoff
from chalicelib.partners.circuit import Circuits, CircuitState
from chalicelib.registry import Partner
from tests.helpers import FakeTime

T0 = 1_800_000_000  # a multiple of 180: a new loop over three partners starts with the first
FAR = T0 + 86_400


@dataclass
class Task:
    id: str
    company: str
    due_at: int
    deadline_at: int = FAR
    state: str = TaskState.UNSENT
    attempts: int = 0


@dataclass
class Partners:
    """Which partners (or single tasks) fail every request, and every request sent (task id, time), in order."""

    circuits: Circuits
    clock: FakeTime
    down: set[str] = field(default_factory=set)
    round_trip: float = 0.0  # how long a request takes
    sent: list[tuple[str, float]] = field(default_factory=list)


class MemoryKind(TaskKind):
    def __init__(self, task_type: TaskType, tasks: list[Task], partners: Partners) -> None:
        self.task_type = task_type
        self.tasks = tasks
        self._partners = partners

    def task_id(self, task: Task) -> str:
        return task.id

    def load(self, ids: Iterable[str]) -> list[Task]:
        wanted = set(ids)
        return [t for t in self.tasks if t.id in wanted]

    def backlog(self, partner: str, until: int) -> Iterator[Task]:
        parked = [t for t in self.tasks if t.company == partner and t.state == TaskState.UNSENT and t.due_at <= until]
        return iter(sorted(parked, key=lambda t: t.due_at))

    def expire(self, task: Task) -> None:
        task.state = TaskState.EXPIRED

    def send(self, now: int, batch: list[tuple[Task, CircuitState]]) -> None:
        for task, state in batch:
            self._partners.sent.append((task.id, self._partners.clock.now))
            self._partners.clock.now += self._partners.round_trip
            if {task.company, task.id} & self._partners.down:  # parked again after its backoff (engine/tasks.py)
                task.attempts += 1
                task.due_at = now + backoff(task.attempts, first=2)  # the deployed 2, 4, 8 s…
                self._partners.circuits.failed(task.company, now)
            else:
                task.state = TaskState.SETTLED
                self._partners.circuits.succeeded(state, now)


def make_partner(partner_id: str, rate: int = 1) -> Partner:
    return Partner(partner_id, partner_id, "", "", "", f"https://{partner_id}.example", "", (),
                   max_requests_per_second=rate)


@pytest.fixture
def partners() -> Iterator[Partners]:
    with mock_aws():
        from chalicelib.storage.models import PartnerCircuit

        PartnerCircuit.create_table(wait=False)
        yield Partners(Circuits(threshold=5, probe_seconds=60), FakeTime(T0))


def delivery(partners: Partners, kinds: list[TaskKind], companies: list[Partner], budget: int = 40) -> Delivery:
    return Delivery(kinds, partners.circuits, lambda: {"accounts": companies},
                    replace(settings(), delivery_budget_seconds=budget), clock=partners.clock.time,
                    sleep=partners.clock.sleep, threads=1)


def open_circuit(partners: Partners, partner: str) -> int:
    """Failing for 30 s with five failures: open; its first probe is due a minute later."""
    for at in (T0 - 30, T0 - 20, T0 - 10, T0 - 5, T0):
        partners.circuits.failed(partner, at)
    assert partners.circuits.states([partner])[partner].is_open
    return T0 + 60


def test_one_budget_for_the_whole_run_and_the_next_run_starts_with_those_it_did_not_reach(partners: Partners) -> None:
    """GIVEN three partners with long backlogs at one request a second (each taking 0.5 s) and a 5 s budget,
    THEN one run takes no more than its budget, and the partners a run did not reach are served first by the
    next: no partner is the one starved every minute."""
    partners.round_trip = 0.5
    abc = [make_partner(p) for p in "abc"]
    tasks = [Task(f"{p}{i}", p, due_at=T0 - 100 + i) for p in "abc" for i in range(20)]
    loop = delivery(partners, [MemoryKind(TaskType.LOOKUP, tasks, partners)], abc, budget=5)
    runs = []
    for minute in range(3):
        partners.clock.now = T0 + 60 * minute
        runs.append(loop.deliver())
        assert partners.clock.now <= T0 + 60 * minute + 5
    assert runs == [{"a": 5, "b": 1, "c": 0}, {"a": 1, "b": 0, "c": 5}, {"a": 0, "b": 5, "c": 1}]


def test_a_closed_partner_with_one_lost_nudge_costs_the_run_no_wait(partners: Partners) -> None:
    tasks = [Task(f"{p}0", p, due_at=T0 - 10) for p in "abcdefgh"]
    loop = delivery(partners, [MemoryKind(TaskType.LOOKUP, tasks, partners)], [make_partner(p) for p in "abcdefgh"])
    assert sum(loop.deliver().values()) == 8
    assert partners.clock.now == T0


def test_probes_rotate_over_tasks_of_every_kind_then_the_backlog_is_replayed_at_the_partners_pace(
        partners: Partners) -> None:
    """GIVEN jd's circuit is open with lookups and a dispute parked, THEN each minute's one probe is the oldest
    due task of any kind — a failed probe backs off, so the next minute probes another task; WHEN a probe is
    answered, THEN the rest of the backlog, both kinds, goes in the same run at jd's 2 requests a second."""
    jd = make_partner("jd", rate=2)
    lookups = [Task("L1", "jd", T0 - 50), Task("L2", "jd", T0 - 30)]
    lookups += [Task(f"L{i}", "jd", T0 - 20) for i in range(3, 7)]
    disputes = [Task("D1", "jd", T0 - 40)]
    loop = delivery(partners, [MemoryKind(TaskType.LOOKUP, lookups, partners),
                               MemoryKind(TaskType.DISPUTE, disputes, partners)], [jd])
    partners.down.add("jd")
    probe_at = open_circuit(partners, "jd")
    for minute in range(3):
        partners.clock.now = probe_at + 60 * minute
        assert loop.deliver() == {"jd": 1}
        partners.clock.now += 59
        assert loop.deliver() == {"jd": 0}  # at most one probe a minute
    assert [task_id for task_id, _ in partners.sent] == ["L1", "D1", "L2"]

    partners.down.clear()
    partners.sent.clear()
    partners.clock.now = probe_at + 180
    assert loop.deliver() == {"jd": 7}
    assert not partners.circuits.states(["jd"])["jd"].is_open
    assert partners.sent[0][0] == "L3"  # the oldest due now: the three probed ones backed off
    assert sorted(task_id for task_id, _ in partners.sent) == sorted(t.id for t in lookups + disputes)
    per_second: dict[float, int] = {}
    for _, at in partners.sent:
        per_second[at] = per_second.get(at, 0) + 1
    starts = sorted(per_second)
    assert per_second[starts[0]] == 1  # the probe alone in its second
    assert max(per_second.values()) <= 2
    assert all(later - earlier >= 1 for earlier, later in zip(starts, starts[1:], strict=False))


def test_a_task_failing_again_in_a_replay_is_not_resent_in_the_same_run(partners: Partners) -> None:
    """GIVEN a probe answered, THEN the whole backlog goes whatever its backoff said, each task once: L1,
    whose requests keep failing, is parked due in 2 s but not picked up again by the same replay."""
    jd = make_partner("jd", rate=5)
    tasks = [Task(f"L{i}", "jd", T0 - 10 + i) for i in range(4)]
    loop = delivery(partners, [MemoryKind(TaskType.LOOKUP, tasks, partners)], [jd])
    partners.clock.now = open_circuit(partners, "jd")
    partners.down.add("L1")
    assert loop.deliver() == {"jd": 4}
    assert [task_id for task_id, _ in partners.sent] == ["L0", "L1", "L2", "L3"]
    assert tasks[1].state == TaskState.UNSENT and not partners.circuits.states(["jd"])["jd"].is_open


def test_the_retry_nudge_sends_each_kind_through_its_own_kind_unless_the_circuit_is_open_or_it_is_late(
        partners: Partners) -> None:
    lookups = [Task("L1", "jd", T0), Task("L2", "tencent", T0), Task("L3", "jd", T0, deadline_at=T0)]
    disputes = [Task("D1", "jd", T0)]
    loop = delivery(partners, [MemoryKind(TaskType.LOOKUP, lookups, partners),
                               MemoryKind(TaskType.DISPUTE, disputes, partners)],
                    [make_partner("jd"), make_partner("tencent")])
    open_circuit(partners, "tencent")
    loop.retry([QueueMessage(type="lookup", id=i) for i in ("L1", "L2", "L3")]
               + [QueueMessage(type="dispute", id="D1")])
    assert sorted(task_id for task_id, _ in partners.sent) == ["D1", "L1"]
    assert [t.state for t in lookups] == [TaskState.SETTLED, TaskState.UNSENT, TaskState.EXPIRED]


def test_the_dispute_backlog_is_read_for_companies_and_operators_never_for_an_unknown_partner(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Companies (SPEC §8) and operators (§10.1) take disputes; an id in neither registry costs no index query."""
    from typing import Any, cast

    from chalicelib import registry
    from chalicelib.disputes.desk import DisputeTasks

    caches = (settings, registry.companies, registry.operators)
    for variable in ("COMPANY_REGISTRY_FILE", "OPERATOR_REGISTRY_FILE"):  # the bundled registries
        monkeypatch.delenv(variable, raising=False)
    for cached in caches:
        cached.cache_clear()
    try:
        with mock_aws():  # no table at all: a query would fail with ResourceNotFoundException
            disputes = DisputeTasks(cast(Any, None))
            assert list(disputes.backlog("left-the-registry", 2**62)) == []
            for partner in (registry.companies()[0], registry.operators()[0]):
                with pytest.raises(Exception, match="not found|ResourceNotFound"):
                    list(disputes.backlog(partner.id, 2**62))
    finally:
        for cached in caches:  # the next test reads its own environment's registries
            cached.cache_clear()


@pytest.mark.parametrize(("first", "expected"), [
    (2, [2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]),  # deployed: doubling, capped at SQS's 15-min delay
    (1, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900]),    # the test stack's shorter first step
])
def test_backoff_doubles_from_its_first_step_up_to_fifteen_minutes(first: int, expected: list[int]) -> None:
    assert [backoff(attempts, first) for attempts in range(1, 12)] == expected
    assert backoff(0, first) == first  # a task parked before any try waits one first step, not half of it
