"""Rate limits and time locks in DynamoDB, written as conditional updates.

Limits are added to a TransactWrite together with the write they guard, so a
refused request changes nothing.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from pynamodb.transactions import TransactWrite

from chalicelib.storage.models import Throttle, at

CHINA = dt.timezone(dt.timedelta(hours=8))


@dataclass(frozen=True)
class Counter:
    """At most `limit` hits in the fixed window ending at `window_end`."""

    key: str
    limit: int
    window_end: int

    def add_to(self, tx: TransactWrite, now: int) -> None:
        tx.update(
            Throttle(self.key),
            actions=[Throttle.hits.add(1), Throttle.ttl.set(at(self.window_end + 60))],
            condition=Throttle.hits.does_not_exist() | (Throttle.hits < self.limit),
        )

    def retry_after(self, now: int) -> int:
        return max(1, self.window_end - now)


@dataclass(frozen=True)
class Lock:
    """Held for `seconds` from now; refused while an earlier hold lasts."""

    key: str
    seconds: int
    holder: str = "-"

    def add_to(self, tx: TransactWrite, now: int) -> None:
        tx.update(
            Throttle(self.key),
            actions=[Throttle.until.set(now + self.seconds), Throttle.holder.set(self.holder),
                     Throttle.ttl.set(at(now + self.seconds + 60))],
            condition=Throttle.until.does_not_exist() | (Throttle.until <= now),
        )

    def retry_after(self, now: int) -> int:
        try:
            held = Throttle.get(self.key, consistent_read=True)
        except Throttle.DoesNotExist:
            return 1
        return max(1, int(held.until or now) - now)

    def release(self) -> None:
        """Give the lock back, only if we still hold it."""
        Throttle(self.key).delete(condition=Throttle.holder == self.holder)


def hour_window(now: int) -> tuple[str, int]:
    start = now - now % 3600
    return str(start), start + 3600


def china_day_window(now: int) -> tuple[str, int]:
    """Daily limits reset at midnight Beijing time, as a citizen counts days."""
    today = dt.datetime.fromtimestamp(now, CHINA).date()
    midnight = dt.datetime.combine(today + dt.timedelta(days=1), dt.time(), CHINA)
    return today.isoformat(), int(midnight.timestamp())


def first_refused(reasons: list[Any], guards: list[Any]) -> Any | None:
    """The first guard whose condition cancelled a transaction, if any.

    Every guard is an update, and PynamoDB sends a transaction's condition
    checks, deletes and puts before its updates, in the order added: the
    guards' reasons are the last len(guards) entries.
    """
    offset = len(reasons) - len(guards)
    for guard, reason in zip(guards, reasons[offset:], strict=True):
        if reason is not None and reason.code == "ConditionalCheckFailed":
            return guard
    return None
