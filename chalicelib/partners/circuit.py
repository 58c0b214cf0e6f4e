"""Per-partner circuit breaker (SPEC §4), one DynamoDB item per partner.

The circuit judges the partner's health, not one request's luck. Transient failures (5xx, 429,
timeout, connection error) are counted since the partner last answered, and the first of them is
remembered (`failing_since`). The circuit opens only when the partner has answered nothing for
`quiet_seconds` (30 s) while at least `threshold` (5) failures came in. Counting consecutive
failures across all lookups would not do: a partner that fails the same requests again and again
(every lookup's first tries, or one lookup in five) while answering the rest would eventually string
5 failures together and latch open, starving the requests it answers. A partner that answers some
requests keeps the circuit closed; the requests that keep failing back off on their own until their
deadline (the retry queue's backoff).

Open: no per-query traffic at all, and the delivery job (partners/delivery.py) sends at most one
probe per `probe_seconds`. A probe that is answered closes it, and the backlog is replayed at the
partner's pace.

Writes are kept off the hot path: an answer writes only when the circuit had failures or was open,
as the caller's state (read at the start of a fan-out) says. That state may be stale: an answer that
follows failures counted after it was read does not reset the clock. That costs at worst an early
opening (the probe closes it again within a minute), never a missed one.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aws_lambda_powertools import Logger
from pynamodb.exceptions import UpdateError

from chalicelib import telemetry
from chalicelib.storage.models import PartnerCircuit, condition_failed

logger = Logger(child=True)


@dataclass(frozen=True)
class CircuitState:
    partner: str
    failures: int = 0  # transient failures since the partner last answered
    is_open: bool = False
    next_probe_at: int = 0
    failing_since: int = 0  # the first of those failures (0: none)

    def probe_due(self, now: int) -> bool:
        return self.is_open and now >= self.next_probe_at


class Circuits:
    def __init__(self, threshold: int, probe_seconds: int, quiet_seconds: int = 30) -> None:
        self._threshold = threshold
        self._probe_seconds = probe_seconds
        self._quiet_seconds = quiet_seconds

    def states(self, partners: Iterable[str]) -> dict[str, CircuitState]:
        """Every partner's state in one BatchGetItem per 100 partners (closed when never failed)."""
        wanted = list(partners)
        states = {p: CircuitState(p) for p in wanted}
        for item in PartnerCircuit.batch_get(wanted, consistent_read=True):
            states[item.partner] = CircuitState(item.partner, int(item.failures or 0), bool(item.is_open),
                                                int(item.next_probe_at or 0), int(item.failing_since or 0))
        return states

    def failed(self, partner: str, now: int) -> bool:
        """Count a transient failure; True when the circuit is (now) open.

        One UpdateItem counts it and, when it is the first since the partner last answered, starts the
        clock (if_not_exists). The circuit opens only once the partner has been silent long enough:
        a burst of failures within `quiet_seconds` is one request's (or one moment's) bad luck.
        """
        circuit = PartnerCircuit(partner)
        circuit.update(actions=[PartnerCircuit.failures.add(1),
                                PartnerCircuit.failing_since.set(PartnerCircuit.failing_since | now),
                                PartnerCircuit.updated_at.set(now)])
        if circuit.is_open:
            return True
        if not self._unhealthy(int(circuit.failures or 0), int(circuit.failing_since or now), now):
            return False
        # One writer opens it (and schedules the first probe). The condition re-checks the health rule
        # on the item itself, so an answer that reset the clock since our count keeps it closed.
        closed = PartnerCircuit.is_open.does_not_exist() | (PartnerCircuit.is_open == False)  # noqa: E712
        try:
            circuit.update(
                actions=[PartnerCircuit.is_open.set(True), PartnerCircuit.opened_at.set(now),
                         PartnerCircuit.next_probe_at.set(now + self._probe_seconds)],
                condition=closed & (PartnerCircuit.failures >= self._threshold)
                & (PartnerCircuit.failing_since <= now - self._quiet_seconds))
        except UpdateError as exc:
            if not condition_failed(exc):
                raise
            # Another writer opened it, or the partner answered in between: the table says which, read back
            # through an UpdateItem (PynamoDB asks for ALL_NEW), which every sender's role has, not a GetItem,
            # which none has (the IAM drive met this race when its failures came close together).
            circuit.update(actions=[PartnerCircuit.updated_at.set(now)])
            return bool(circuit.is_open)
        telemetry.count("CircuitOpened", partner=partner)
        logger.warning("circuit opened", extra={"partner": partner, "failures": int(circuit.failures),
                                                "silent_seconds": now - int(circuit.failing_since)})
        return True

    def _unhealthy(self, failures: int, failing_since: int, now: int) -> bool:
        """SPEC §4: nothing answered for `quiet_seconds` while at least `threshold` failures came in."""
        return failures >= self._threshold and now - failing_since >= self._quiet_seconds

    def succeeded(self, state: CircuitState, now: int) -> None:
        """The partner answered (200, 202 or a 4xx): it is alive, so reset the count and the clock,
        closing the circuit if it was open. No write when `state` had no failures (the hot path)."""
        if not state.failures and not state.failing_since and not state.is_open:
            return
        PartnerCircuit(state.partner).update(actions=[
            PartnerCircuit.failures.set(0), PartnerCircuit.is_open.set(False), PartnerCircuit.updated_at.set(now),
            PartnerCircuit.failing_since.remove(), PartnerCircuit.opened_at.remove(),
            PartnerCircuit.next_probe_at.remove()])
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
