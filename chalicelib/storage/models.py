"""One PynamoDB model per item type. Table names come from configuration.

These classes are the single source of truth for the tables: tests and the
local stack create tables from them (create_all), and infra/ is checked
against them by tests/test_infra.py.
No attribute holds a phone number, ID digits or a code in clear (SPEC §6).
"""
from __future__ import annotations

import datetime as dt
import functools
from typing import Any

from pynamodb.attributes import (
    BooleanAttribute,
    MapAttribute,
    NumberAttribute,
    TTLAttribute,
    UnicodeAttribute,
    UnicodeSetAttribute,
)
from pynamodb.connection import Connection, base
from pynamodb.indexes import AllProjection, GlobalSecondaryIndex, KeysOnlyProjection
from pynamodb.models import Model
from pynamodb.transactions import TransactWrite

from chalicelib import clients
from chalicelib.config import settings

# PynamoDB gives each model's connection, in each thread, a botocore session of its own, which parsed botocore's
# endpoint rules and the DynamoDB model again: 60-100 ms of CPU at each model's first request, in every cold
# container (PynamoDB offers no way to share one: pynamodb/PynamoDB#876, #1245). Its sessions read them through
# the process's one loader instead: 10 ms each.
base.get_session = clients.botocore_session


class _Meta:
    billing_mode = "PAY_PER_REQUEST"


class VerificationCode(Model):
    """A number's live codes (SPEC §3: up to 3), keyed by the number's HMAC."""

    class Meta(_Meta):
        table_name = settings().codes_table

    phone_key = UnicodeAttribute(hash_key=True)
    codes: MapAttribute[str, Any] = MapAttribute(default=dict)  # HMAC(pepper, phone_key, code) -> expires_at
    issue_id = UnicodeAttribute(null=True)  # the latest code's random id: a client's wrong tries count per code sent
    wrong = NumberAttribute(default=0)  # wrong tries against the live codes, from every client
    version = NumberAttribute(default=0)  # bumped by every change of `codes`: an issue rewrites them only if unchanged
    ttl = TTLAttribute()


class Throttle(Model):
    """A rate-limit counter or a time lock, keyed by '<kind>#<hmac>[#<window>]'."""

    class Meta(_Meta):
        table_name = settings().throttle_table

    key = UnicodeAttribute(hash_key=True)
    hits = NumberAttribute(null=True)  # not `count`: that name is Model.count()
    resets = NumberAttribute(null=True)  # a client's wrong tries: how often a code at its request lifted them
    until = NumberAttribute(null=True)
    holder = UnicodeAttribute(null=True)
    ttl = TTLAttribute()


class DeadlineIndex(GlobalSecondaryIndex[Any]):
    """Open records by their deadline slot: what the deadline executions (engine/deadlines.py) reply to.

    Sparse: a record carries its keys from acceptance until its one reply or outcome SMS is committed.
    The hash key is one of a few shards per kind ('query#7'), so "everything due by now" is one range
    query per shard and no partition is hot, whatever the rate.
    """

    class Meta:
        index_name = "deadline"
        projection = KeysOnlyProjection()

    deadline_shard = UnicodeAttribute(hash_key=True)
    deadline_slot = NumberAttribute(range_key=True)


class QueryRecord(Model):
    """One accepted query: its sealed personal data, its partners' settled answers, its deadline.

    Personal data is sealed under a per-query data key (chalicelib/privacy.py): the phone until
    the record expires, the ID digits only until the carrier check.
    """

    class Meta(_Meta):
        table_name = settings().queries_table

    query_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute(null=True)  # partners/kinds.py: accounts (absent), cards or releases
    status = UnicodeAttribute()  # contracts.QueryStatus
    created_at = NumberAttribute()
    deadline_at = NumberAttribute()
    data_key = UnicodeAttribute()  # the KMS-encrypted data key (encryption context: the query id)
    phone_sealed = UnicodeAttribute()
    id_sealed = UnicodeAttribute(null=True)  # ID digits (accounts) or the ID number (cards)
    name_sealed = UnicodeAttribute(null=True)  # cards: the holder's name
    lock_key = UnicodeAttribute()
    # Cards: HMAC(name, ID number, phone), under which the reply keeps what it reported for a card dispute
    # (SPEC §10.1, chalicelib/cards reply_key).
    reported_key = UnicodeAttribute(null=True)
    # Releases: the day the holder's subscription began, as the carrier stated it (SPEC §10.2); not logged.
    since = UnicodeAttribute(null=True)
    outcome = UnicodeAttribute(null=True)  # contracts.CarrierOutcome
    updated_at = NumberAttribute(null=True)
    # The fan-out: the partners asked and each settled lookup (partners/lookups.py: a number each, kept small).
    asked = UnicodeSetAttribute(null=True)
    results = MapAttribute(null=True)  # type: ignore[var-annotated]  # partner -> count, -1: no answer
    app_counts = MapAttribute(null=True)  # type: ignore[var-annotated]  # company -> its per-app breakdown (JSON)
    # Completion (engine/deadlines.py): in the deadline index until replied; who claimed the reply, when.
    deadline_shard = UnicodeAttribute(null=True)
    deadline_slot = NumberAttribute(null=True)
    completion_claimed_at = NumberAttribute(null=True)
    deadline = DeadlineIndex()
    ttl = TTLAttribute()

    def sealed(self, *fields: str) -> dict[str, str | None]:
        """The sealed values of these fields (Vault.open's input), by the name they were sealed under."""
        stored = {"phone": self.phone_sealed, "id_last6": self.id_sealed, "id_number": self.id_sealed,
                  "name": self.name_sealed}
        return {field: stored[field] for field in fields}


class BacklogIndex(GlobalSecondaryIndex[Any]):
    """A partner's unsent tasks (lookups, disputes), oldest due first. Sparse: only UNSENT tasks carry its keys."""

    class Meta:
        index_name = "backlog"
        projection = AllProjection()

    backlog_partner = UnicodeAttribute(hash_key=True)
    due_at = NumberAttribute(range_key=True)


class Lookup(Model):
    """One partner lookup: the opaque id a partner sees, mapped to its query and company."""

    class Meta(_Meta):
        table_name = settings().lookups_table

    lookup_id = UnicodeAttribute(hash_key=True)
    query_id = UnicodeAttribute()
    kind = UnicodeAttribute(null=True)  # partners/kinds.py: accounts (absent), cards or releases
    company = UnicodeAttribute()  # the partner asked: a company, or an operator for cards
    state = UnicodeAttribute()  # contracts.TaskState
    deadline_at = NumberAttribute()
    attempts = NumberAttribute(default=0)  # transient failures so far (backoff)
    result = UnicodeAttribute(null=True)  # the settled LookupResult as JSON
    answer_digest = UnicodeAttribute(null=True)  # what the partner answered, to tell duplicates from conflicts
    requested_at = NumberAttribute(null=True)
    answered_at = NumberAttribute(null=True)
    backlog_partner = UnicodeAttribute(null=True)
    due_at = NumberAttribute(null=True)
    backlog = BacklogIndex()
    ttl = TTLAttribute()


class PartnerCircuit(Model):
    """A partner's circuit breaker (SPEC §4). No item: closed with no failures."""

    class Meta(_Meta):
        table_name = settings().circuits_table

    partner = UnicodeAttribute(hash_key=True)
    failures = NumberAttribute(default=0)  # transient failures since the partner last answered
    # The first of those failures: the circuit judges the partner's health over time (SPEC §4), not one
    # request's luck, so it opens only after the partner has answered nothing for a while.
    failing_since = NumberAttribute(null=True)
    is_open = BooleanAttribute(default=False)
    opened_at = NumberAttribute(null=True)
    next_probe_at = NumberAttribute(null=True)
    updated_at = NumberAttribute(null=True)


class IdempotencyRecord(Model):
    """The table Powertools Idempotency writes (its default attribute names)."""

    class Meta(_Meta):
        table_name = settings().idempotency_table

    id = UnicodeAttribute(hash_key=True)
    expiration = TTLAttribute(null=True)


class ReportedAccounts(Model):
    """A reply SMS reported at least one account at this company to this number (SPEC §8 nothing_to_dispute),
    or at least one card at this operator, registered to this ID number, to this phone (SPEC §10.1).

    Keyed by the number's HMAC (the key chalicelib/codes.py uses), or 'cards#' + HMAC(name, ID number, phone)
    for cards (LookupKind.reported_key), and the partner id: nothing in clear.
    Written by SendReply; a later reply with 0 at the partner deletes it; gone after 7 days.
    """

    class Meta(_Meta):
        table_name = settings().reported_table

    phone_key = UnicodeAttribute(hash_key=True)
    company = UnicodeAttribute(range_key=True)
    replied_at = NumberAttribute()  # when the reply that reported the accounts was sent
    ttl = TTLAttribute()


class Dispute(Model):
    """One dispute (SPEC §8 of accounts, §10.1 of cards): its partner, status, delivery state, the answer,
    its deadline.

    The phone is sealed under the dispute's own data key (encryption context: the dispute id) and
    deleted once the outcome SMS is sent; a card dispute's name and ID number as soon as the operator
    accepted it.
    """

    class Meta(_Meta):
        table_name = settings().disputes_table

    dispute_id = UnicodeAttribute(hash_key=True)
    kind = UnicodeAttribute(null=True)  # partners/kinds.py: accounts (absent) or cards
    company = UnicodeAttribute()  # the partner: a company, or an operator for cards
    status = UnicodeAttribute()  # contracts.DisputeStatus
    created_at = NumberAttribute()
    deadline_at = NumberAttribute()
    data_key = UnicodeAttribute(null=True)
    phone_sealed = UnicodeAttribute(null=True)
    name_sealed = UnicodeAttribute(null=True)  # cards, until the operator accepted the dispute
    id_sealed = UnicodeAttribute(null=True)  # cards: the ID number, likewise
    lock_key = UnicodeAttribute()  # the open-dispute lock (throttle table), released at the end
    state = UnicodeAttribute()  # contracts.TaskState: the delivery to the partner
    attempts = NumberAttribute(default=0)
    requested_at = NumberAttribute(null=True)
    backlog_partner = UnicodeAttribute(null=True)
    due_at = NumberAttribute(null=True)
    outcome = UnicodeAttribute(null=True)  # contracts.DisputeOutcome
    accounts = NumberAttribute(null=True)  # the answer's count: accounts unbound, or cards suspended
    answer_digest = UnicodeAttribute(null=True)
    answered_at = NumberAttribute(null=True)
    updated_at = NumberAttribute(null=True)
    backlog = BacklogIndex()
    deadline_shard = UnicodeAttribute(null=True)  # as QueryRecord's: until the outcome SMS is committed
    deadline_slot = NumberAttribute(null=True)
    completion_claimed_at = NumberAttribute(null=True)
    deadline = DeadlineIndex()
    ttl = TTLAttribute()


ALL_MODELS: tuple[type[Model], ...] = (VerificationCode, Throttle, QueryRecord, Lookup, PartnerCircuit,
                                        IdempotencyRecord, ReportedAccounts, Dispute)
# Table environment variable per model (storage/tables.py lists them with their names; infra/ reads this).
TABLE_VARS: dict[type[Model], str] = {VerificationCode: "CODES_TABLE", Throttle: "THROTTLE_TABLE",
                                      QueryRecord: "QUERIES_TABLE", Lookup: "LOOKUPS_TABLE",
                                      PartnerCircuit: "CIRCUITS_TABLE", IdempotencyRecord: "IDEMPOTENCY_TABLE",
                                      ReportedAccounts: "REPORTED_TABLE", Dispute: "DISPUTES_TABLE"}
# Circuits never expire: a partner's state outlives any query.
TTL_ATTRIBUTE: dict[type[Model], str | None] = {VerificationCode: "ttl", Throttle: "ttl", QueryRecord: "ttl",
                                               Lookup: "ttl", PartnerCircuit: None, IdempotencyRecord: "expiration",
                                               ReportedAccounts: "ttl", Dispute: "ttl"}


def create_all() -> None:
    """Create every table with TTL on (tests and the local stack)."""
    import boto3

    ddb = boto3.client("dynamodb")
    for model in ALL_MODELS:
        if not model.exists():
            model.create_table(wait=False)  # moto and on-demand tables are ACTIVE at once
            if TTL_ATTRIBUTE[model] is None:
                continue
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


def condition_failed(exc: Exception) -> bool:
    """A PynamoDB write refused by its condition (not any other error)."""
    return getattr(exc, "cause_response_code", None) == "ConditionalCheckFailedException"


def at(epoch: float) -> dt.datetime:
    """An epoch second as the aware datetime TTLAttribute expects."""
    return dt.datetime.fromtimestamp(epoch, dt.UTC)
