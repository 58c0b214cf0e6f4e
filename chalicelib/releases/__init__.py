"""Recycled number release (二次号码解绑, SPEC §10.2): the parts that are not the engine.

A release is a third kind of lookup (partners/kinds.py RELEASES): the carrier's check of phone and ID
digits as for a query, whose `match` also states `since`, the day the current holder's subscription
began; then every company is asked to unbind the accounts bound to the number before that day.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.storage.models import QueryRecord

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def parse_since(value: object, today: dt.date) -> str | None:
    """The carrier's `since` as YYYY-MM-DD, or None when it is missing, not a real date or in the future
    (the release then ends as `unknown`: nobody is asked to unbind on a date we cannot trust)."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        return None
    return value if day <= today else None


def settle_lock(record: QueryRecord, matched: bool, now: int, interval_seconds: int) -> None:
    """A release's limit counts from the carrier's match (SPEC §10.2): the lock taken at acceptance is held for
    the interval from now on a match, given back on any other outcome (a mismatch, unknown, or no carrier answer
    by the deadline does not use the number's release). Idempotent: a retried step finds it settled already,
    or held by someone else."""
    from pynamodb.exceptions import DeleteError, UpdateError

    from chalicelib.storage.models import Throttle, at, condition_failed

    lock = Throttle(record.lock_key)
    try:
        if matched:
            until = now + interval_seconds
            lock.update(actions=[Throttle.until.set(until), Throttle.ttl.set(at(until + 60))],
                        condition=(Throttle.holder == record.query_id) & (Throttle.until < until - 60))
        else:
            lock.delete(condition=Throttle.holder == record.query_id)
    except (UpdateError, DeleteError) as exc:
        if not condition_failed(exc):
            raise
