"""The lookups of one query: ask every partner, settle their answers, claim the reply.

The workflow's AskCompanies task asks every partner at once (bounded pool, one record write and
one decrypt for all of them) and ends: the execution does not wait for anyone. Each lookup
settles when it is answered, answered with an error, or refused for good (4xx). Whoever settles
the last one — the fan-out itself, a callback, the retry queue or the delivery job — claims the
query's completion (engine/deadlines.py: one conditional write) and enqueues its one reply; if
some never answer, the deadline execution of the query's slot does it instead.

A transient failure (5xx, 429, timeout, connection error) is never retried here: the lookup
goes to its partner's backlog and the delivery mechanism (partners/delivery.py) owns it.

The lookup id a partner sees is an HMAC of (query id, partner): opaque, and the same on every
attempt.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger
from pynamodb.exceptions import PutError, UpdateError

from chalicelib import errors, signing, telemetry
from chalicelib.config import Settings
from chalicelib.contracts import QUERY_ID, LookupResult, ReplyType, TaskState, TaskType
from chalicelib.engine import tasks
from chalicelib.engine.deadlines import Deadlines
from chalicelib.engine.tasks import Sent, TaskClient, TaskDesk, rejected
from chalicelib.partners.circuit import Circuits
from chalicelib.partners.kinds import ACCOUNTS, LookupKind, kind_of
from chalicelib.partners.protocol import LOOKUP_ID, Answer, parse_answer
from chalicelib.privacy import Hasher, Vault, partner_secret
from chalicelib.registry import Partner
from chalicelib.storage.models import Lookup, QueryRecord, at, condition_failed

logger = Logger(child=True)

FAN_OUT_THREADS = 16


class PartnerClient(TaskClient[Answer]):
    """One signed lookup request to a partner (SPEC §4), its reply classified."""

    def send(self, kind: LookupKind, partner: Partner, task_id: str, fields: dict[str, str]) -> Sent[Answer]:
        """`task_id`: what the partner calls it (the lookup id, or the release id); `fields`: the data this kind
        sends (the phone; ID number and name; the phone and `since`)."""
        telemetry.count("LookupRequested", company=partner.id)
        return self.post(kind, partner, task_id, fields, kind.request_path, kind.callback_suffix, kind.task_field)

    def parse(self, kind: LookupKind, partner: Partner, body: Any) -> Answer:
        return parse_answer(body, partner, self._config.partner_max_account_count, kind.count_field,
                            kind.breakdowns, kind.task_field)

    def task_of(self, answer: Answer) -> str:
        return answer.lookup_id


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


class LookupDesk(TaskDesk[Lookup, Answer, LookupResult]):
    task_type = TaskType.LOOKUP
    model = Lookup
    deferred_metric = "LookupDeferred"
    unknown_task = "未知的查询编号。"
    client: PartnerClient

    def __init__(self, hasher: Hasher, vault: Vault, circuits: Circuits, client: PartnerClient,
                 deadlines: Deadlines | None = None, sqs_client: Any | None = None, config: Settings | None = None,
                 clock: Callable[[], float] = time.time,
                 secret_for: Callable[[str], str] = partner_secret) -> None:
        super().__init__(circuits, client, sqs_client, config, clock)
        self._hasher = hasher
        self._vault = vault
        self.deadlines = deadlines or Deadlines(config, sqs_client=sqs_client, clock=clock)
        self._secret_for = secret_for

    def lookup_id(self, query_id: str, partner: str) -> str:
        return self._hasher.digest("lookup", query_id, partner)[:32]

    # -- the fan-out (AskCompanies) -----------------------------------------------------
    def ask_all(self, query_id: str, deadline_at: int, kind: LookupKind = ACCOUNTS) -> None:
        """Ask every partner of this kind once; claim the reply at once if every lookup settled here."""
        now = int(self._clock())
        record = QueryRecord(query_id)
        # One write records who is asked and returns the record: no read before it. A retried step
        # asks the partners of the first attempt. A query already answered (its deadline came while
        # the carrier check was retried) asks nobody.
        try:
            record.update(actions=[QueryRecord.asked.set(QueryRecord.asked | {p.id for p in kind.partners()}),
                                   QueryRecord.results.set(QueryRecord.results | {}),
                                   QueryRecord.app_counts.set(QueryRecord.app_counts | {})],
                          condition=QueryRecord.deadline_slot.exists())
        except UpdateError as exc:
            if condition_failed(exc):
                logger.info("query closed before its fan-out", extra={"query_id": query_id})
                return
            raise
        partners = [p for p in kind.partners() if p.id in (record.asked or set())]
        fields = self._open(record, kind)
        states = self.circuits.states(p.id for p in partners)

        def ask(partner: Partner) -> LookupResult | None:
            lookup = self._lookup_for(query_id, kind, partner.id, deadline_at, now)
            if lookup.state == TaskState.SETTLED:
                return self._stored_result(lookup)
            if lookup.state != TaskState.PENDING:
                return None  # in the backlog (or expired): the delivery mechanism's
            return self.send_unless_open(lookup, partner, fields, states[partner.id], now)

        with ThreadPoolExecutor(max_workers=min(FAN_OUT_THREADS, max(1, len(partners)))) as pool:
            settled = [r for r in pool.map(ask, partners) if r is not None]
        self.record_results(query_id, settled, record)

    def _open(self, record: QueryRecord, kind: LookupKind) -> dict[str, str]:
        """The data this kind of lookup sends to partners: the sealed fields (one KMS request), and a release's
        `since` (no `since`, no fields: nothing is sent)."""
        opened: dict[str, str] = self._vault.open(record.query_id, record.data_key, record.sealed(*kind.sealed))
        if kind.sends_since:
            if record.since is None:
                return {}
            opened["since"] = record.since
        return opened

    def _lookup_for(self, query_id: str, kind: LookupKind, partner: str, deadline_at: int, now: int) -> Lookup:
        lookup = Lookup(self.lookup_id(query_id, partner), query_id=query_id, company=partner,
                        state=TaskState.PENDING, deadline_at=deadline_at, attempts=0, requested_at=now,
                        ttl=at(deadline_at + 7 * 86400))
        lookup.kind = kind.stored
        try:
            lookup.save(condition=Lookup.lookup_id.does_not_exist())
        except PutError as exc:
            if not condition_failed(exc):
                raise
            lookup = Lookup.get(lookup.lookup_id, consistent_read=True)  # a retried step: as it stands
        return lookup

    # -- sending one lookup (fan-out, retry queue, delivery job: TaskDesk.dispatch), its outcomes -------
    def task_id(self, lookup: Lookup) -> str:
        return lookup.lookup_id

    def still_open(self) -> Any:
        # An expired lookup still takes its answer: the query's reply may not have gone yet (SPEC §4).
        return Lookup.state != TaskState.SETTLED

    def request(self, lookup: Lookup, partner: Partner, fields: dict[str, str]) -> Sent[Answer]:
        kind = kind_of(lookup.kind)
        return self.client.send(kind, partner, lookup.query_id if kind.task_per_query else lookup.lookup_id, fields)

    def answered(self, lookup: Lookup, partner: Partner, answer: Answer) -> LookupResult:
        try:
            return self.settle(lookup, answer)
        except errors.Conflict:
            # Its 200 differs from the callback it sent first: the first answer stands (SPEC §4).
            rejected(partner.id, "conflicting_answer")
            return self._stored_result(lookup)

    def refused(self, lookup: Lookup) -> LookupResult:
        return self._settle_unanswered(lookup, "refused")

    def waiting(self, lookup: Lookup, now: int) -> None:
        if lookup.state == TaskState.UNSENT:  # sent at last: out of the backlog, waiting for its callback
            # (Its callback may have come before its 202: settled already, and recorded by that callback.)
            tasks.mark_waiting(lookup, now, [], Lookup.state == TaskState.UNSENT)

    # -- settling --------------------------------------------------------------------------
    def settle(self, lookup: Lookup, answer: Answer) -> LookupResult:
        """Store the answer once. An exact duplicate changes nothing; a different one is a Conflict."""
        result = answer.result(lookup.company)
        digest = tasks.digest(answer)
        first = self._settle(lookup, result, digest)
        if lookup.answer_digest != digest:
            raise errors.Conflict()
        if not answer.is_error and first:
            telemetry.count("LookupAnswered", company=lookup.company)
            if lookup.requested_at:
                telemetry.latency("LookupLatency", 1000 * (self._clock() - lookup.requested_at),
                                  company=lookup.company)
        return self._stored_result(lookup)

    def _settle_unanswered(self, lookup: Lookup, reason: str) -> LookupResult:
        telemetry.count("LookupRefused", company=lookup.company)
        self._settle(lookup, {"company": lookup.company, "answered": False}, reason)
        return self._stored_result(lookup)

    def _settle(self, lookup: Lookup, result: LookupResult, digest: str) -> bool:
        """Settle once (engine/tasks.py); `lookup` is then as stored. True when this call settled it."""
        if lookup.state == TaskState.SETTLED:
            return False
        return tasks.settle(lookup, digest, int(self._clock()), [Lookup.result.set(_json(result))], self.still_open())

    @staticmethod
    def _stored_result(lookup: Lookup) -> LookupResult:
        result: LookupResult = json.loads(lookup.result or "{}")
        return result

    def record_results(self, query_id: str, results: list[LookupResult], record: QueryRecord | None = None) -> None:
        """Put settled results on the query record; claim its reply if every asked partner settled."""
        if results:
            record = QueryRecord(query_id)
            try:
                record.update(actions=[action for r in results for action in _result_actions(r)],
                              condition=QueryRecord.query_id.exists())
            except UpdateError as exc:
                if not condition_failed(exc):
                    raise
                return  # the query record expired (a very late answer): acknowledged, nothing to do (SPEC §4)
        if record is not None:
            self._complete_if_all_settled(record)

    def _complete_if_all_settled(self, record: QueryRecord) -> None:
        asked = record.asked or set()
        if not asked or record.deadline_slot is None or record.completion_claimed_at is not None:
            return  # not asked yet, replied already, or its reply claimed
        if not asked <= stored_results(record).keys():
            return
        # Phone cards: the name and ID number have served their purpose once every operator answered.
        forget = ([QueryRecord.id_sealed.remove(), QueryRecord.name_sealed.remove()]
                  if kind_of(record.kind).sends_identity else [])
        if self.deadlines.claim(ReplyType.QUERY, record, forget):
            logger.info("lookups complete", extra={"query_id": record.query_id, "partners": len(asked)})

    # -- callbacks (POST /v1/partners/{company}/results, /v1/operators/{operator}/results) --
    def verify_callback(self, kind: LookupKind, partner_id: str, headers: dict[str, str], raw_body: bytes) -> Partner:
        partner = kind.partner(partner_id)
        if partner is None:
            raise errors.NotFound("未知的企业。")
        signing.verify(self._secret_for(partner.secret_name), headers, raw_body, now=self._clock())
        return partner

    def record_callback(self, kind: LookupKind, partner: Partner, body: Any) -> None:
        """Store the answer once and, if it was the last, claim the query's reply."""
        lookup, answer = self.answered_task(kind, partner, body)
        self.record_results(lookup.query_id, [self.settle(lookup, answer)])

    def callback_key(self, kind: LookupKind, partner: Partner, task_id: str) -> str | None:
        if not (QUERY_ID if kind.task_per_query else LOOKUP_ID).fullmatch(task_id):
            return None
        # A release id names every company's task: the partner, from the signed route, says which one.
        return self.lookup_id(task_id, partner.id) if kind.task_per_query else task_id

    # -- reading what a lookup sent later carries ----------------------------------------
    def payloads(self, query_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """query id -> the personal data its lookups send; one record read and one decrypt per query."""
        opened = {}
        for query_id in set(query_ids):
            try:
                record = QueryRecord.get(query_id, consistent_read=True)
            except QueryRecord.DoesNotExist:
                continue  # expired: its lookups expire with it
            kind = kind_of(record.kind)
            fields = self._open(record, kind)
            # Cards: gone once every operator answered; releases: with the phone, `since`.
            if len(fields) == len(kind.sealed) + int(kind.sends_since):
                opened[query_id] = fields
        return opened


def _result_actions(result: LookupResult) -> list[Any]:
    """A settled lookup as the query record keeps it: a number per partner (-1: no answer), and the
    per-app breakdown only where there is one. Every callback rewrites the whole record (DynamoDB
    bills a write by the item's size), so 132 operators' results must stay small."""
    partner = result["company"]
    actions = [QueryRecord.results[partner].set(int(result.get("count", 0)) if result.get("answered") else -1)]
    if result.get("apps"):
        actions.append(QueryRecord.app_counts[partner].set(_json(result["apps"])))
    return actions


def stored_results(record: QueryRecord) -> dict[str, LookupResult]:
    """partner id -> settled LookupResult, as kept on the query record."""
    counts = record.results.as_dict() if record.results is not None else {}
    apps = record.app_counts.as_dict() if record.app_counts is not None else {}
    settled: dict[str, LookupResult] = {}
    for partner, count in counts.items():
        if int(count) < 0:
            settled[partner] = {"company": partner, "answered": False}
            continue
        settled[partner] = {"company": partner, "answered": True, "count": int(count)}
        if partner in apps:
            settled[partner]["apps"] = {app: int(n) for app, n in json.loads(apps[partner]).items()}
    return settled
