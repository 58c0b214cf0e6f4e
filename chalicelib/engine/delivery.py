"""The per-partner delivery loop every partner task shares — lookups of both kinds and disputes (SPEC §4).

What happens to a task its partner could not take. Three AWS primitives, each for what it does best:
- the backlog is the sparse `backlog` index every task table carries (partner, due time): unsent tasks
  wait there at no cost, however many and however long;
- while a partner's circuit is closed, the SQS retry queue brings each failed task back after its
  exponential backoff (2 s … 15 min), so a blip costs seconds, not minutes (`retry`);
- once a minute, a scheduled job (`deliver`) probes every open circuit (one request a minute) and, when
  a probe is answered, replays that partner's backlog — every kind of task together — at its registry
  pace (`max_requests_per_second`); with the circuit closed it sends the tasks whose nudge was lost.
The probe is the oldest due task of any kind: a failed probe backs off like any try, so probes rotate over
different tasks, and a parked dispute probes as well as a lookup. While a partner is down its work is one
index query per kind and one probe a minute, whatever the number of pending tasks. A task whose deadline
passed is dropped unsent on the way: its reply (暂未返回, or the dispute's expired SMS) is the deadline
machinery's.

What differs per kind of task is a `TaskKind`: its table and how a batch of it is sent (and what its
expiry counts). One run of the job has one time budget, shared by every partner, below the function's
timeout; partners are served from a rotating start, so those a run did not reach come first in the next.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger

from chalicelib import telemetry
from chalicelib.config import Settings, settings
from chalicelib.contracts import QueueMessage, TaskState, TaskType
from chalicelib.engine import tasks
from chalicelib.partners.circuit import Circuits, CircuitState
from chalicelib.registry import Partner

logger = Logger(child=True)

PARTNER_THREADS = 8
REPLAY_PAGE = 100
ALL_DUE = 2**62  # `until` for a backlog replayed whatever its backoff said

# A task table's item: `state`, `company`, `deadline_at`, `due_at` (engine/tasks.py writes the same fields).
Task = Any


class TaskKind(ABC):
    """One kind of partner task, as the delivery loop sees it."""

    task_type: TaskType
    model: type[Any]  # the task table; it carries the `backlog` index (backlog_partner, due_at)

    @abstractmethod
    def send(self, now: int, batch: list[tuple[Task, CircuitState]]) -> None:
        """Send these parked tasks (their partner's circuit closed, or this one the probe) and act on the
        replies: settle, park again, or expire one with nobody left to send it to. One task's failure must
        not stop the others'."""

    def task_id(self, task: Task) -> str:
        """Its table's hash key: what the retry queue names it by."""
        key = next(name for name, attribute in self.model.get_attributes().items() if attribute.is_hash_key)
        return str(getattr(task, key))

    def load(self, ids: Iterable[str]) -> list[Task]:
        return list(self.model.batch_get(list(set(ids)), consistent_read=True))

    def backlog(self, partner: str, until: int) -> Iterator[Task]:
        """The partner's parked tasks due by `until`, oldest due first, read a page at a time."""
        return iter(self.model.backlog.query(partner, self.model.due_at <= until, page_size=REPLAY_PAGE))

    def expire(self, task: Task) -> None:
        """Out of the backlog unsent: its deadline passed (the deadline machinery replies)."""
        tasks.expire(task)


Parked = tuple[TaskKind, Task]


class Delivery:
    """`partners`: every partner to serve, in groups (a kind of lookup: companies, operators) for the
    open-circuit gauges; a partner may stand in several groups."""

    def __init__(self, kinds: Sequence[TaskKind], circuits: Circuits,
                 partners: Callable[[], Mapping[str, Sequence[Partner]]], config: Settings | None = None,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] = time.sleep,
                 threads: int = PARTNER_THREADS) -> None:
        self._kinds = tuple(kinds)
        self._threads = threads
        self.circuits = circuits
        self._partners = partners
        self._config = config or settings()
        self._clock = clock
        self._sleep = sleep
        # Where the next run starts in the partner list: the first partner this container's last run did not
        # reach. A new container starts at the minute's place, which moves every minute.
        self._next_start: int | None = None

    # -- the SQS retry queue: tasks whose backoff has run out --------------------------------------
    def retry(self, messages: Iterable[QueueMessage]) -> None:
        now = int(self._clock())
        wanted: dict[str, list[str]] = {}
        for message in messages:
            wanted.setdefault(message["type"], []).append(message["id"])
        due: list[Parked] = []
        for kind in self._kinds:
            if wanted.get(kind.task_type.value):
                due += [(kind, task) for task in kind.load(wanted[kind.task_type.value])
                        if task.state == TaskState.UNSENT and not self._expire_if_late(kind, task, now)]
        if not due:
            return  # answered meanwhile, sent by the delivery job, or late
        states = self.circuits.states({task.company for _, task in due})
        # An open circuit leaves the task in the backlog: the probe and replay take it from there.
        self._send(now, [(kind, task, states[task.company]) for kind, task in due
                         if not states[task.company].is_open])

    # -- the scheduled job, once a minute ------------------------------------------------------------
    def deliver(self, now: float | None = None) -> dict[str, int]:
        """Probe open circuits, replay backlogs; returns requests sent per partner (for logs and tests)."""
        started = self._clock() if now is None else now
        budget_end = self._clock() + self._config.delivery_budget_seconds
        groups = self._partners()
        partners = list({p.id: p for group in groups.values() for p in group}.values())
        states = self.circuits.states(c.id for c in partners)
        for partner in partners:  # a gauge per partner, every minute: the open-circuit alarms read it
            telemetry.count("CircuitOpen", int(states[partner.id].is_open), partner=partner.id)
        for group, members in groups.items():  # and how many are open per group (one alarm for 132 operators)
            telemetry.count("CircuitsOpen", sum(states[p.id].is_open for p in members), kind=group)
        if not partners:
            return {}
        first = self._next_start if self._next_start is not None else int(started) // 60
        first %= len(partners)
        order = partners[first:] + partners[:first]

        def serve(partner: Partner) -> int | None:
            if self._clock() >= budget_end:
                return None  # the run's budget is spent: first in line next run
            try:
                return self._deliver_partner(partner, states[partner.id], int(started), budget_end)
            except Exception:  # one partner's trouble (a throttled read…) must not cost the others their run
                logger.exception("delivery failed for a partner", extra={"partner": partner.id})
                return 0

        with ThreadPoolExecutor(max_workers=min(self._threads, len(order))) as pool:
            served = list(pool.map(serve, order))
        missed = next((i for i, n in enumerate(served) if n is None), None)
        self._next_start = first + (missed if missed is not None else 1)
        if missed is not None:
            logger.warning("delivery budget spent before every partner was served",
                           extra={"unserved": sum(n is None for n in served)})
        sent = {c.id: n or 0 for c, n in zip(order, served, strict=True)}
        if any(sent.values()):
            logger.info("backlog delivered", extra={"sent": {k: v for k, v in sent.items() if v}})
        return {c.id: sent[c.id] for c in partners}

    def _deliver_partner(self, partner: Partner, state: CircuitState, now: int, budget_end: float) -> int:
        if not state.is_open:
            return self._replay(partner, state, now, budget_end)  # the nudges that were lost
        if not state.probe_due(now):
            return 0
        probe = self._due(partner.id, now, limit=1, skip=set())
        if not probe or not self.circuits.claim_probe(state, now):
            return 0
        telemetry.count("CircuitProbe", partner=partner.id)
        probed_at = self._clock()
        kind, task = probe[0]
        self._send(now, [(kind, task, state)])
        if self.circuits.states([partner.id])[partner.id].is_open:
            return 1  # still down: next probe in a minute
        # Answered: the circuit is closed; the whole backlog goes, whatever its backoff said, from the next
        # second on (the probe was this second's request).
        return 1 + self._replay(partner, CircuitState(partner.id), ALL_DUE, budget_end, next_slot=probed_at + 1,
                                sent_already={(kind.task_type, kind.task_id(task))})

    def _replay(self, partner: Partner, state: CircuitState, until: int, budget_end: float,
                next_slot: float = 0.0, sent_already: set[tuple[TaskType, str]] | None = None) -> int:
        """Send the backlog due by `until`, at most max_requests_per_second, within the run's budget.

        A task is sent once per run: one that fails again is parked due later, which a replay of the whole
        backlog would otherwise pick up again at once, ignoring its backoff."""
        rate = max(1, partner.max_requests_per_second)
        done = set(sent_already or ())
        sent = 0
        while self._clock() < budget_end:
            page = self._due(partner.id, until, REPLAY_PAGE, skip=done)
            if not page:
                break
            for start in range(0, len(page), rate):
                # Paced before each slot rather than after: a partner with one lost nudge costs the run no wait.
                if next_slot >= budget_end:
                    return sent
                wait = next_slot - self._clock()
                if wait > 0:
                    self._sleep(wait)
                slot_started = self._clock()
                if slot_started >= budget_end:
                    return sent
                next_slot = slot_started + 1
                batch = page[start:start + rate]
                self._send(int(slot_started), [(kind, task, state) for kind, task in batch])
                done.update((kind.task_type, kind.task_id(task)) for kind, task in batch)
                sent += len(batch)
                # The partner's state as it stands now, for the next batch: a success after failures
                # must reset the circuit's clock, which only happens from a state that shows them.
                state = self.circuits.states([partner.id])[partner.id]
                if state.is_open:
                    return sent  # failing again: stop, the next probe decides
        return sent

    def _due(self, partner: str, until: int, limit: int, skip: set[tuple[TaskType, str]]) -> list[Parked]:
        """Up to `limit` of the partner's live unsent tasks of every kind due by `until`, oldest due first.

        Late ones (past their deadline) are dropped on the way and do not count, so a backlog headed by
        expired tasks still yields a probe once the partner can answer again."""
        now = int(self._clock())
        found: list[Parked] = []
        for kind in self._kinds:
            taken = 0
            for task in kind.backlog(partner, until):
                if task.state != TaskState.UNSENT or (kind.task_type, kind.task_id(task)) in skip:
                    continue
                if self._expire_if_late(kind, task, now):
                    continue
                found.append((kind, task))
                taken += 1
                if taken >= limit:
                    break
        found.sort(key=lambda parked: int(parked[1].due_at or 0))  # stable: kinds in their order on a tie
        return found[:limit]

    @staticmethod
    def _expire_if_late(kind: TaskKind, task: Task, now: int) -> bool:
        if now < int(task.deadline_at):
            return False
        kind.expire(task)
        return True

    def _send(self, now: int, items: list[tuple[TaskKind, Task, CircuitState]]) -> None:
        for kind in self._kinds:
            batch = [(task, state) for of_kind, task, state in items if of_kind is kind]
            if batch:
                kind.send(now, batch)
