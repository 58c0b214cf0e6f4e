"""Lookups (companies' and operators') as tasks of the per-partner delivery loop (engine/delivery.py).

What is lookup-specific when a parked lookup is sent: the personal data it carries is read once per
query (one record read and one decrypt for all its lookups in a batch), the lookups go concurrently, and
whatever settled is recorded on its query, whose reply the last one claims.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from aws_lambda_powertools import Logger

from chalicelib import telemetry
from chalicelib.contracts import LookupResult, TaskType
from chalicelib.engine import tasks
from chalicelib.engine.delivery import TaskKind
from chalicelib.partners.circuit import CircuitState
from chalicelib.partners.kinds import KINDS, kind_of
from chalicelib.partners.lookups import LookupDesk
from chalicelib.registry import Partner
from chalicelib.storage.models import Lookup

logger = Logger(child=True)

SEND_THREADS = 16


def partner_groups() -> dict[str, Sequence[Partner]]:
    """Every partner a task may be addressed to, per kind of lookup (companies also take disputes)."""
    return {kind.kind.value: kind.partners() for kind in KINDS.values()}


class LookupTasks(TaskKind):
    task_type = TaskType.LOOKUP
    model = Lookup

    def __init__(self, desk: LookupDesk) -> None:
        self._desk = desk

    def expire(self, task: Lookup) -> None:
        if tasks.expire(task):
            telemetry.count("LookupExpired", company=task.company)

    def send(self, now: int, batch: list[tuple[Lookup, CircuitState]]) -> None:
        """Send these lookups concurrently; record what settled on their queries (claiming their replies)."""
        payloads = self._desk.payloads(lookup.query_id for lookup, _ in batch)

        def send(item: tuple[Lookup, CircuitState]) -> LookupResult | None:
            lookup, state = item
            partner = kind_of(lookup.kind).partner(lookup.company)
            if partner is None or lookup.query_id not in payloads:
                self.expire(lookup)  # left the registry, or its query is gone: nothing to send
                return None
            try:
                return self._desk.dispatch(lookup, partner, payloads[lookup.query_id], state, now)
            except Exception:  # one lookup's failure must not lose the others' answers (recorded below)
                logger.exception("lookup send failed", extra={"company": lookup.company})
                return None

        with ThreadPoolExecutor(max_workers=min(SEND_THREADS, len(batch))) as pool:
            results = list(pool.map(send, batch))
        by_query: dict[str, list[LookupResult]] = defaultdict(list)
        for (lookup, _), result in zip(batch, results, strict=True):
            if result is not None:
                by_query[lookup.query_id].append(result)
        for query_id, settled in by_query.items():
            self._desk.record_results(query_id, settled)
