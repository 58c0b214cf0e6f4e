"""Rate limits and time locks in DynamoDB, written as conditional updates.

Limits are added to a TransactWrite together with the write they guard, so a
refused request changes nothing.
"""
from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.transactions import TransactWrite

from chalicelib import errors, telemetry
from chalicelib.storage.models import Throttle, at

T = TypeVar("T")

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

    def held(self, now: int) -> bool:
        """Someone holds it now (a solution's accepted-once record: already spent)."""
        try:
            return int(Throttle.get(self.key, consistent_read=True).until or 0) > now
        except Throttle.DoesNotExist:
            return False

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


def china_today(now: float | None = None) -> dt.date:
    """Today in Beijing: a birth date is "in the future" by the citizen's calendar, not UTC's."""
    return dt.datetime.fromtimestamp(time.time() if now is None else now, CHINA).date()


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


def conflicted(exc: TransactWriteError) -> bool:
    """DynamoDB cancelled the transaction for a concurrent write to one of its items."""
    return any(r is not None and r.code == "TransactionConflict" for r in exc.cancellation_reasons or [])


@dataclass
class ConflictRetry:
    """Runs a transaction again when DynamoDB cancels it for a conflict, after a random pause
    (full jitter, so contenders spread out); after `retries` more tries, 503 service_busy.

    `write` handles its own refusals (a guard's failed condition becomes its 4xx); only conflicts come
    back here (a cancelled transaction, or a single-item write meeting a transaction on its item), anything
    else is raised as is.
    """

    retries: int
    base_delay: float = 0.025
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def run(self, write: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return write()
            except PynamoDBException as exc:
                # A transaction cancelled for a conflict, or a single-item write refused because a transaction
                # holds the item (TransactionConflictException, which botocore does not retry).
                if not (isinstance(exc, TransactWriteError) and conflicted(exc)
                        or exc.cause_response_code == "TransactionConflictException"):
                    raise
                telemetry.count("TransactionConflict")
                if attempt == self.retries:
                    raise errors.ServiceBusy("系统繁忙，请稍后再试。", retry_after=1) from exc
                self.sleep(self.rng.uniform(0, self.base_delay * 2 ** attempt))
        raise AssertionError("unreachable")
