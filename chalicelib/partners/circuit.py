"""Per-partner circuit breaker (SPEC §4), one DynamoDB item per partner.

Closed: every lookup is sent. After `threshold` consecutive transient failures (5xx, 429,
timeout, connection error) it opens: no per-query traffic at all, and the delivery job
(partners/delivery.py) sends at most one probe per `probe_seconds`. A probe that is answered
closes it, and the backlog is replayed at the partner's pace.

Writes are kept off the hot path: a success writes only when the circuit had failures.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError

from chalicelib import telemetry
from chalicelib.storage.models import PartnerCircuit

logger = Logger(child=True)


@dataclass(frozen=True)
class CircuitState:
    partner: str
    failures: int = 0
    is_open: bool = False
    next_probe_at: int = 0

    def probe_due(self, now: int) -> bool:
        return self.is_open and now >= self.next_probe_at


class Circuits:
    def __init__(self, threshold: int, probe_seconds: int) -> None:
        self._threshold = threshold
        self._probe_seconds = probe_seconds

    def states(self, partners: Iterable[str]) -> dict[str, CircuitState]:
        """Every partner's state in one BatchGetItem per 100 partners (closed when never failed)."""
        wanted = list(partners)
        states = {p: CircuitState(p) for p in wanted}
        for item in PartnerCircuit.batch_get(wanted, consistent_read=True):
            states[item.partner] = CircuitState(item.partner, int(item.failures or 0), bool(item.is_open),
                                                int(item.next_probe_at or 0))
        return states

    def failed(self, partner: str, now: int) -> bool:
        """Count a transient failure; True when the circuit is (now) open."""
        circuit = PartnerCircuit(partner)
        circuit.update(actions=[PartnerCircuit.failures.add(1), PartnerCircuit.updated_at.set(now)])
        if circuit.is_open:
            return True
        if int(circuit.failures) < self._threshold:
            return False
        try:  # one writer opens it (and schedules the first probe); the others see it open
            circuit.update(actions=[PartnerCircuit.is_open.set(True), PartnerCircuit.opened_at.set(now),
                                    PartnerCircuit.next_probe_at.set(now + self._probe_seconds)],
                           condition=PartnerCircuit.is_open.does_not_exist() | (PartnerCircuit.is_open == False))  # noqa: E712
        except UpdateError:
            return True
        telemetry.count("CircuitOpened", partner=partner)
        logger.warning("circuit opened", extra={"partner": partner, "failures": int(circuit.failures)})
        return True

    def succeeded(self, state: CircuitState, now: int) -> None:
        """The partner answered (200, 202 or a 4xx): reset, closing the circuit if it was open."""
        if not state.failures and not state.is_open:
            return
        PartnerCircuit(state.partner).update(actions=[
            PartnerCircuit.failures.set(0), PartnerCircuit.is_open.set(False), PartnerCircuit.updated_at.set(now),
            PartnerCircuit.opened_at.remove(), PartnerCircuit.next_probe_at.remove()])
        if state.is_open:
            telemetry.count("CircuitClosed", partner=state.partner)
            logger.info("circuit closed", extra={"partner": state.partner})

    def claim_probe(self, state: CircuitState, now: int) -> bool:
        """Take this minute's probe slot; False when another run took it (at most one probe a minute)."""
        try:
            PartnerCircuit(state.partner).update(
                actions=[PartnerCircuit.next_probe_at.set(now + self._probe_seconds)],
                condition=(PartnerCircuit.is_open == True) & (PartnerCircuit.next_probe_at <= now))  # noqa: E712
        except UpdateError:
            return False
        return True
