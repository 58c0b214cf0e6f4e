"""The per-partner delivery mechanism: what happens to a lookup a partner could not take.

Three AWS primitives, each for what it does best:
- the backlog is a sparse DynamoDB index (Lookup.backlog: partner, due time): unsent lookups
  wait there at no cost, however many and however long;
- while a partner's circuit is closed, an SQS delay queue brings each failed lookup back after
  its exponential backoff (2 s … 15 min), so a blip costs seconds, not minutes (`retry`);
- once a minute, a scheduled job (`deliver`) probes every open circuit (one request a minute)
  and, when a probe is answered, replays that partner's backlog at its registry pace
  (`max_requests_per_second`); it also sends lookups whose nudge was lost.
While a partner is down its work is one index query and one probe a minute, whatever the number
of pending queries. Lookups whose query deadline passed are dropped unsent: the reply already
said 暂未返回.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from aws_lambda_powertools import Logger

from chalicelib import telemetry
from chalicelib.config import Settings, settings
from chalicelib.contracts import LookupResult, LookupState
from chalicelib.engine import tasks
from chalicelib.partners.circuit import CircuitState
from chalicelib.partners.kinds import KINDS, kind_of
from chalicelib.partners.lookups import LookupDesk
from chalicelib.registry import Company
from chalicelib.storage.models import Lookup

logger = Logger(child=True)

PARTNER_THREADS = 8
REPLAY_PAGE = 100


class Backlog(Protocol):
    """Other work parked per partner (disputes): replayed once a minute while the partner's circuit is closed,
    and the probe of an open circuit when no lookup is waiting (any kind of task may be the probe)."""

    def replay(self, company: Company, state: CircuitState, now: int) -> int: ...

    def probe(self, company: Company, state: CircuitState, now: int) -> bool: ...


class Delivery:
    def __init__(self, desk: LookupDesk, config: Settings | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = time.sleep, backlogs: Sequence[Backlog] = ()) -> None:
        self._desk = desk
        self._backlogs = tuple(backlogs)
        self._config = config or settings()
        self._clock = clock
        self._sleep = sleep

    # -- the SQS retry queue: one lookup's backoff has run out --------------------------------
    def retry(self, lookup_ids: Iterable[str]) -> None:
        now = int(self._clock())
        due = []
        for lookup in Lookup.batch_get(list(set(lookup_ids)), consistent_read=True):
            if lookup.state != LookupState.UNSENT:
                continue  # answered meanwhile, or sent by the delivery job
            if not self._expire_if_late(lookup, now):
                due.append(lookup)
        if not due:
            return
        states = self._desk.circuits.states({lookup.company for lookup in due})
        # An open circuit leaves the lookup in the backlog: the probe and replay take it from there.
        self._send(now, [(lookup, states[lookup.company]) for lookup in due if not states[lookup.company].is_open])

    # -- the scheduled job, once a minute ----------------------------------------------------------
    def deliver(self, now: float | None = None) -> dict[str, int]:
        """Probe open circuits, replay backlogs; returns requests sent per partner (for logs and tests)."""
        started = self._clock() if now is None else now
        companies = [partner for kind in KINDS.values() for partner in kind.partners()]
        states = self._desk.circuits.states(c.id for c in companies)
        for company in companies:  # a gauge per partner, every minute: the open-circuit alarms read it
            telemetry.count("CircuitOpen", int(states[company.id].is_open), partner=company.id)
        for kind in KINDS.values():  # and how many are open per kind (one alarm for 132 operators)
            telemetry.count("CircuitsOpen", sum(states[p.id].is_open for p in kind.partners()), kind=kind.kind.value)
        with ThreadPoolExecutor(max_workers=min(PARTNER_THREADS, len(companies) or 1)) as pool:
            sent = dict(zip((c.id for c in companies),
                            pool.map(lambda c: self._deliver_partner(c, states[c.id], int(started)), companies),
                            strict=True))
        if self._backlogs:
            after = self._desk.circuits.states(c.id for c in companies)  # a probe may have closed some
            for backlog in self._backlogs:
                for company in companies:
                    if not after[company.id].is_open:
                        sent[company.id] += backlog.replay(company, after[company.id], int(started))
        if any(sent.values()):
            logger.info("backlog delivered", extra={"sent": {k: v for k, v in sent.items() if v}})
        return sent

    def _deliver_partner(self, company: Company, state: CircuitState, now: int) -> int:
        if state.is_open:
            if not state.probe_due(now):
                return 0
            probe = self._backlog(company.id, now, limit=1)
            others = [b for b in self._backlogs] if not probe else []
            if (not probe and not others) or not self._desk.circuits.claim_probe(state, now):
                return 0
            telemetry.count("CircuitProbe", partner=company.id)
            probed_at = self._clock()
            if probe:
                self._send(now, [(probe[0], state)])
            elif not any(backlog.probe(company, state, now) for backlog in others):
                return 0  # nothing due after all: the slot is spent, the next minute tries again
            if self._desk.circuits.states([company.id])[company.id].is_open:
                return 1  # still down: next probe in a minute
            # Answered: the circuit is closed; the whole backlog goes, whatever its backoff said,
            # from the next second on (the probe was this second's request).
            self._sleep(max(0.0, probed_at + 1 - self._clock()))
            return 1 + self._replay(company, CircuitState(company.id), now, until=2**62)
        return self._replay(company, state, now, until=now)

    def _replay(self, company: Company, state: CircuitState, now: int, until: int) -> int:
        """Send the backlog due by `until`, at most max_requests_per_second, within the run's budget."""
        budget_end = self._clock() + self._config.delivery_budget_seconds
        rate = max(1, company.max_requests_per_second)
        sent = 0
        while self._clock() < budget_end:
            page = self._backlog(company.id, until, limit=REPLAY_PAGE)
            if not page:
                break
            for start in range(0, len(page), rate):
                slot_started = self._clock()
                batch = page[start:start + rate]
                self._send(int(slot_started), [(lookup, state) for lookup in batch])
                sent += len(batch)
                # The partner's state as it stands now, for the next batch: a success after failures
                # must reset the circuit's clock, which only happens from a state that shows them.
                state = self._desk.circuits.states([company.id])[company.id]
                if state.is_open:
                    return sent  # failing again: stop, the next probe decides
                if self._clock() >= budget_end:
                    return sent
                self._sleep(max(0.0, slot_started + 1 - self._clock()))
        return sent

    def _backlog(self, partner: str, until: int, limit: int) -> list[Lookup]:
        """Up to `limit` of the partner's live unsent lookups due by `until`, oldest first.

        Late ones (their query's deadline passed) are dropped on the way and do not count, so a
        backlog headed by expired lookups still yields a probe once the partner can answer again.
        """
        now = int(self._clock())
        found: list[Lookup] = []
        for lookup in Lookup.backlog.query(partner, Lookup.due_at <= until, page_size=REPLAY_PAGE):
            if lookup.state == LookupState.UNSENT and not self._expire_if_late(lookup, now):
                found.append(lookup)
                if len(found) >= limit:
                    break
        return found

    def _expire_if_late(self, lookup: Lookup, now: int) -> bool:
        if now < int(lookup.deadline_at):
            return False
        self._expire(lookup)
        return True

    @staticmethod
    def _expire(lookup: Lookup) -> None:
        if tasks.expire(lookup):
            telemetry.count("LookupExpired", company=lookup.company)

    def _send(self, now: int, lookups: list[tuple[Lookup, CircuitState]]) -> None:
        """Send these lookups concurrently; record what settled on their queries (claiming their replies)."""
        if not lookups:
            return
        payloads = self._desk.payloads(lookup.query_id for lookup, _ in lookups)

        def send(item: tuple[Lookup, CircuitState]) -> LookupResult | None:
            lookup, state = item
            company = kind_of(lookup.kind).partner(lookup.company)
            if company is None or lookup.query_id not in payloads:
                self._expire(lookup)  # left the registry, or its query is gone: nothing to send
                return None
            try:
                return self._desk.dispatch(lookup, company, payloads[lookup.query_id], state, now)
            except Exception:  # one lookup's failure must not lose the others' answers (recorded below)
                logger.exception("lookup send failed", extra={"company": lookup.company})
                return None

        with ThreadPoolExecutor(max_workers=min(16, len(lookups))) as pool:
            results = list(pool.map(send, lookups))
        by_query: dict[str, list[LookupResult]] = defaultdict(list)
        for (lookup, _), result in zip(lookups, results, strict=True):
            if result is not None:
                by_query[lookup.query_id].append(result)
        for query_id, settled in by_query.items():
            self._desk.record_results(query_id, settled)
