"""Partner lookups: ask a company, match its answer to our waiting task token.

The lookup id a partner sees is an HMAC of (query id, company): opaque to the
partner, and the same on every retry of the workflow step, so an answer to an
earlier attempt still reaches the current task token. The token itself never
leaves the service.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from pynamodb.exceptions import PutError, UpdateError

from chalicelib import clients, errors, http, registry, signing, telemetry
from chalicelib.config import Settings, settings
from chalicelib.privacy import Hasher, Vault, partner_secret
from chalicelib.storage.models import Lookup, QueryRecord, at

# SendTask* answers these when the task is gone (timed out, execution stopped).
_TOKEN_GONE = {"TaskTimedOut", "InvalidToken", "TaskDoesNotExist"}


def parse_answer(body: Any) -> dict[str, Any]:
    """Validate a partner answer (callback or immediate 200); InvalidRequest otherwise."""
    if not isinstance(body, dict) or not isinstance(body.get("lookup_id"), str):
        raise errors.InvalidRequest("需要lookup_id。")
    if "error" in body:
        if not isinstance(body["error"], str) or "account_count" in body:
            raise errors.InvalidRequest("error必须是字符串。")
        return {"lookup_id": body["lookup_id"], "error": body["error"][:200]}
    count = body.get("account_count")
    if type(count) is not int or count < 0:
        raise errors.InvalidRequest("account_count必须是非负整数。")
    answer: dict[str, Any] = {"lookup_id": body["lookup_id"], "account_count": count}
    apps = body.get("apps")
    if apps is not None:
        if (not isinstance(apps, dict) or not apps
                or any(not isinstance(k, str) or type(v) is not int or v < 0 for k, v in apps.items())
                or sum(apps.values()) != count):
            raise errors.InvalidRequest("apps必须是各应用账号数，且总和等于account_count。")
        answer["apps"] = apps
    return answer


class LookupService:
    def __init__(self, hasher: Hasher, vault: Vault, sfn_client: Any | None = None,
                 config: Settings | None = None, clock: Callable[[], float] = time.time,
                 secret_for: Callable[[str], str] = partner_secret) -> None:
        self._hasher = hasher
        self._vault = vault
        self._sfn = sfn_client
        self._config = config or settings()
        self._clock = clock
        self._secret_for = secret_for

    @property
    def sfn(self) -> Any:
        return self._sfn or clients.client("stepfunctions")

    def lookup_id(self, query_id: str, company: str) -> str:
        return self._hasher.digest("lookup", query_id, company)[:32]

    # -- workflow side -------------------------------------------------------
    def request(self, query_id: str, company_id: str, deadline_at: int, task_token: str) -> str:
        """Ask the partner; the task token is answered now (200) or by callback (202).

        Returns what happened: "waiting" or "answered". Raises PartnerUnavailable
        (retried by the workflow), PartnerRejected or LookupDeadlinePassed (no answer).
        """
        now = int(self._clock())
        if now >= deadline_at:
            raise errors.LookupDeadlinePassed(company_id)
        company = registry.company(company_id)
        if company is None:
            raise errors.PartnerRejected(f"{company_id} left the registry")
        lookup_id = self.lookup_id(query_id, company_id)
        lookup = self._attach_token(lookup_id, query_id, company_id, task_token, now)
        if lookup.status == "answered":
            self._deliver(lookup)  # an earlier attempt got the answer: hand it to this token
            return "answered"
        record = QueryRecord.get(query_id)
        telemetry.count("LookupRequested", company=company_id)
        payload = {
            "lookup_id": lookup_id,
            "phone": self._vault.open(record.phone_sealed, query_id),
            "callback_url": f"{self._config.public_api_url}/v1/partners/{company_id}/results",
        }
        try:
            reply = http.post_signed(f"{company.base_url}/lookups", payload, self._secret_for(company.secret_name))
        except http.Unreachable as exc:
            raise errors.PartnerUnavailable(f"{company_id}: {exc}") from exc
        if reply.status == 202:
            return "waiting"
        if reply.status == 200:
            try:
                answer = parse_answer(reply.body)
            except errors.InvalidRequest as exc:
                raise errors.PartnerRejected(f"{company_id}: malformed answer") from exc
            self._store(lookup, {**answer, "lookup_id": lookup_id})
            return "answered"
        if reply.status >= 500 or reply.status == 429:
            raise errors.PartnerUnavailable(f"{company_id}: HTTP {reply.status}")
        raise errors.PartnerRejected(f"{company_id}: HTTP {reply.status}")

    def _attach_token(self, lookup_id: str, query_id: str, company: str, token: str, now: int) -> Lookup:
        lookup = Lookup(lookup_id, query_id=query_id, company=company, task_token=token, status="pending",
                        delivered=False, requested_at=now, ttl=at(now + 7 * 86400))  # as the query
        try:
            lookup.save(condition=Lookup.lookup_id.does_not_exist())
        except PutError:  # a retry of this step: same lookup, new token
            lookup = Lookup.get(lookup_id, consistent_read=True)
            lookup.update(actions=[Lookup.task_token.set(token), Lookup.delivered.set(False),
                                   Lookup.requested_at.set(now)])
        return lookup

    # -- callback side -------------------------------------------------------
    def verify_callback(self, company_id: str, headers: dict[str, str], raw_body: bytes) -> None:
        company = registry.company(company_id)
        if company is None:
            raise errors.NotFound("未知的企业。")
        signing.verify(self._secret_for(company.secret_name), headers, raw_body, now=self._clock())

    def record(self, company_id: str, answer: dict[str, Any]) -> None:
        """Store the answer once and release the waiting task. Duplicates change nothing."""
        try:
            lookup = Lookup.get(answer["lookup_id"], consistent_read=True)
        except Lookup.DoesNotExist as exc:
            raise errors.NotFound("未知的查询编号。") from exc
        if lookup.company != company_id:
            raise errors.NotFound("未知的查询编号。")
        self._store(lookup, answer)

    def _store(self, lookup: Lookup, answer: dict[str, Any]) -> None:
        company_id = lookup.company
        # Compare answers key-order-blind; store them as sent (app order is the partner's).
        digest = hashlib.sha256(json.dumps(answer, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        if lookup.status != "answered":
            try:
                lookup.update(
                    actions=[Lookup.status.set("answered"), Lookup.answer.set(json.dumps(answer, ensure_ascii=False)),
                             Lookup.answer_digest.set(digest), Lookup.answered_at.set(int(self._clock()))],
                    condition=Lookup.status == "pending",
                )
                if "error" not in answer:
                    telemetry.count("LookupAnswered", company=company_id)
                    if lookup.requested_at:
                        telemetry.latency("LookupLatency", 1000 * (self._clock() - lookup.requested_at),
                                          company=company_id)
            except UpdateError:
                lookup.refresh(consistent_read=True)  # a concurrent duplicate won: compare with it
        if lookup.answer_digest != digest:
            raise errors.Conflict()
        if not lookup.delivered:
            self._deliver(lookup)

    def _deliver(self, lookup: Lookup) -> None:
        answer = json.loads(lookup.answer or "{}")
        try:
            if "error" in answer:
                self.sfn.send_task_failure(taskToken=lookup.task_token, error="PartnerError",
                                           cause="the partner reported an error")
            else:
                output = {"company": lookup.company, "answered": True,
                          "account_count": int(answer["account_count"])}
                if answer.get("apps"):
                    output["apps"] = {k: int(v) for k, v in answer["apps"].items()}
                self.sfn.send_task_success(taskToken=lookup.task_token, output=json.dumps(output, ensure_ascii=False))
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in _TOKEN_GONE:
                raise  # transient: the partner's retry of the callback delivers it
        lookup.update(actions=[Lookup.delivered.set(True)])
