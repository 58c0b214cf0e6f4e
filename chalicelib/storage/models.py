"""One PynamoDB model per item type. Table names come from configuration.

These classes are the single source of truth for the tables: tests and the
local stack create tables from them (create_all), and infra/ is checked
against them by tests/test_infra.py.
No attribute holds a phone number, ID digits or a code in clear (SPEC §6).
"""
from __future__ import annotations

import datetime as dt
import functools

from pynamodb.attributes import (
    BooleanAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
)
from pynamodb.connection import Connection
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from chalicelib.config import settings


class _Meta:
    billing_mode = "PAY_PER_REQUEST"


class VerificationCode(Model):
    """The current code for a number; keyed by the number's HMAC."""

    class Meta(_Meta):
        table_name = settings().codes_table

    phone_key = UnicodeAttribute(hash_key=True)
    code_hash = UnicodeAttribute()  # HMAC(pepper, phone_key, code)
    expires_at = NumberAttribute()
    attempts = NumberAttribute(default=0)
    used = BooleanAttribute(default=False)
    ttl = TTLAttribute()


class Throttle(Model):
    """A rate-limit counter or a time lock, keyed by '<kind>#<hmac>[#<window>]'."""

    class Meta(_Meta):
        table_name = settings().throttle_table

    key = UnicodeAttribute(hash_key=True)
    hits = NumberAttribute(null=True)  # not `count`: that name is Model.count()
    until = NumberAttribute(null=True)
    holder = UnicodeAttribute(null=True)
    ttl = TTLAttribute()


class QueryRecord(Model):
    """One accepted query. The phone is KMS-sealed; ID digits live only until the carrier check."""

    class Meta(_Meta):
        table_name = settings().queries_table

    query_id = UnicodeAttribute(hash_key=True)
    status = UnicodeAttribute()
    created_at = NumberAttribute()
    deadline_at = NumberAttribute()
    phone_sealed = UnicodeAttribute()
    id_sealed = UnicodeAttribute(null=True)
    lock_key = UnicodeAttribute()
    outcome = UnicodeAttribute(null=True)
    updated_at = NumberAttribute(null=True)
    ttl = TTLAttribute()


class Lookup(Model):
    """One partner lookup: the opaque id a partner sees, mapped to our task token."""

    class Meta(_Meta):
        table_name = settings().lookups_table

    lookup_id = UnicodeAttribute(hash_key=True)
    query_id = UnicodeAttribute()
    company = UnicodeAttribute()
    task_token = UnicodeAttribute(null=True)
    status = UnicodeAttribute(default="pending")  # pending | answered
    answer = UnicodeAttribute(null=True)  # the partner's answer as canonical JSON
    answer_digest = UnicodeAttribute(null=True)
    delivered = BooleanAttribute(default=False)
    requested_at = NumberAttribute(null=True)
    answered_at = NumberAttribute(null=True)
    ttl = TTLAttribute()


class IdempotencyRecord(Model):
    """The table Powertools Idempotency writes (its default attribute names)."""

    class Meta(_Meta):
        table_name = settings().idempotency_table

    id = UnicodeAttribute(hash_key=True)
    expiration = TTLAttribute(null=True)


ALL_MODELS: tuple[type[Model], ...] = (VerificationCode, Throttle, QueryRecord, Lookup, IdempotencyRecord)
TTL_ATTRIBUTE = {VerificationCode: "ttl", Throttle: "ttl", QueryRecord: "ttl", Lookup: "ttl",
                 IdempotencyRecord: "expiration"}


def create_all() -> None:
    """Create every table with TTL on (tests and the local stack)."""
    import boto3

    ddb = boto3.client("dynamodb")
    for model in ALL_MODELS:
        if not model.exists():
            model.create_table(wait=False)  # moto and on-demand tables are ACTIVE at once
            ddb.update_time_to_live(
                TableName=model.Meta.table_name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE[model]},
            )


@functools.cache
def _connection() -> Connection:
    return Connection()


def transaction() -> TransactWrite:
    """A TransactWrite on the shared connection: all-or-nothing across tables."""
    return TransactWrite(connection=_connection())


def at(epoch: float) -> dt.datetime:
    """An epoch second as the aware datetime TTLAttribute expects."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
