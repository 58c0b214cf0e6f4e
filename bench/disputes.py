"""Disputes (SPEC §8) measured on the local stack as the query patterns are (issue 14, "Disputes ≥ 300/s under the
Step Functions quotas whatever the company does").

One fresh stack per dispute pattern. First, not measured: each subscriber with accounts at some company
(local/fixtures/accounts.csv) makes an account query, every company answering at once, so the reply lists those
accounts (a dispute needs one). Then, measured: each disputes one of those companies (a fresh code, POST
/v1/disputes), the company treating the dispute as the pattern says: at once (its 200 carries the outcome) or
silent (202, never calls back: the deadline executions send the expired SMS at DISPUTE_DEADLINE_SECONDS). For
each dispute: its execution's lifetime (startDate -> stopDate) and StateEntered events, and everything the meter
counts from the code request to the outcome SMS committed. A dispute counts once its outcome SMS is committed
(resolved or expired, out of the deadline index), not when its execution ends.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

from bench.meter import API_HANDLER, acting_as
from bench.patterns import Measured, Pattern, Run, _partners, wait_for

# Each subscriber asks two codes (its query's, its dispute's) within the resend gap: the gap is not under measure.
RESEND_VARIABLE = "CODE_RESEND_SECONDS"


def disputable(subscribers: list[dict[str, str]]) -> list[tuple[dict[str, str], str]]:
    """(subscriber, a company where the fixture binds accounts to the phone): what a reply lists and can be
    disputed."""
    from local import simulators

    companies: dict[str, str] = {}
    for phone, company, count, _ in simulators.load_accounts().rows:
        if count > 0:
            companies.setdefault(phone, company)
    return [(row, companies[row["phone"]]) for row in subscribers if row["phone"] in companies]


@contextmanager
def _no_resend_gap() -> Iterator[None]:
    before = os.environ.get(RESEND_VARIABLE)
    os.environ[RESEND_VARIABLE] = "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(RESEND_VARIABLE, None)
        else:
            os.environ[RESEND_VARIABLE] = before


def dispute_arn(run: Run, dispute_id: str) -> str:
    return str(run.stack.env["DISPUTE_STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":"
               + dispute_id)


def _ended(run: Run, dispute_id: str) -> dict[str, Any] | None:
    try:
        described: dict[str, Any] = run.sfn.describe_execution(executionArn=dispute_arn(run, dispute_id))
    except run.sfn.exceptions.ExecutionDoesNotExist:
        return None
    return described if described["status"] != "RUNNING" else None


def _closed(run: Run, dispute_id: str) -> bool:
    """Its outcome SMS committed: resolved or expired, out of the deadline index."""
    import boto3

    from chalicelib.config import settings

    table = boto3.resource("dynamodb").Table(settings().disputes_table)
    item = table.get_item(Key={"dispute_id": dispute_id}, ConsistentRead=True).get("Item")
    return item is not None and item.get("status") in ("resolved", "expired") and "deadline_slot" not in item


def _dispute(run: Run, phone: str, company: str) -> str:
    with acting_as(API_HANDLER):
        response = run._post("/v1/verification-codes", {"phone": phone})
    if response.status_code != 202:
        raise RuntimeError(f"dispute code refused: {response.status_code} {response.body!r}")
    code = run._latest_code(phone)
    with acting_as(API_HANDLER):
        response = run._post("/v1/disputes", {"phone": phone, "code": code, "company": company})
    if response.status_code != 202:
        raise RuntimeError(f"dispute refused: {response.status_code} {response.body!r}")
    dispute_id = str(json.loads(response.body)["dispute_id"])
    run.submitted[dispute_id] = time.perf_counter()
    return dispute_id


def measure_disputes(pattern: Pattern, workdir: str, subscribers: list[dict[str, str]], log: Any) -> Measured:
    chosen = disputable(subscribers)[:pattern.max_queries or None]
    log.flush()
    log_start = os.path.getsize(log.name)
    with _no_resend_gap():
        run = Run(pattern, workdir, [row for row, _ in chosen])
        with run.running():
            stack = run.stack
            partners, _, _ = _partners(pattern, stack)  # every company at once: the queries before the disputes
            result = Measured(pattern, partners, None)
            not_measured: dict[str, list[float]] = {"code": [], "submit": [], "status": []}
            for row, _ in chosen:
                run.wait_closed(run.submit(row, not_measured))
            wait_for(run.retry_queue_idle, 30, "the retry queue to drain")
            before = len(stack.read_outbox())
            for company in partners:  # how the companies treat what comes next: the disputes
                stack.partners[company].mode = pattern.company_mode
            run.meter.clear()
            since = dt.datetime.now(dt.UTC)
            started = time.perf_counter()
            dispute_ids = [_dispute(run, row["phone"], company) for row, company in chosen]
            timeout = pattern.deadline_seconds + 2 * pattern.slot_seconds + 30
            for dispute_id in dispute_ids:
                described = wait_for(partial(_ended, run, dispute_id), 60, f"dispute {dispute_id}'s execution")
                result.execution_seconds.append((described["stopDate"] - described["startDate"]).total_seconds())
                events = run.sfn.get_execution_history(executionArn=dispute_arn(run, dispute_id),
                                                       maxResults=1000)["events"]
                result.transitions.append(sum(1 for e in events if e["type"].endswith("StateEntered")))
                if described["status"] != "SUCCEEDED":
                    result.notes.append(f"dispute execution {described['status']}")
            for dispute_id in dispute_ids:
                wait_for(partial(_closed, run, dispute_id), timeout, f"dispute {dispute_id}'s outcome SMS")
                if dispute_id in run.replied:
                    result.reply_seconds.append(run.replied[dispute_id] - run.submitted[dispute_id])
            wait_for(run.retry_queue_idle, 30, "the retry queue to drain")
            result.queries = len(dispute_ids)
            result.meter = run.meter.snapshot()
            result.window_seconds = time.perf_counter() - started
            result.deadline_transitions, result.deadline_executions = run.deadline_activity(
                since, dt.datetime.now(dt.UTC))
            result.deadline_execution_transitions, result.deadline_execution_steps = run.deadline_histories()
            result.deadline_starts = result.meter.requests.get(("StartDeadlines", "states:StartExecution"), 0)
            outcomes = [m["message"] for m in stack.read_outbox()[before:]
                        if "验证码" not in m["message"] and "已提交" not in m["message"]]
            result.replies = sum(1 for m in outcomes if any(d in m for d in dispute_ids))
            result.unanswered_reported = sum("未在15天内答复" in m for m in outcomes)  # the expired SMS
            result.modes = Counter({pattern.company_mode: len(dispute_ids)})
    log.flush()
    result.log_bytes = os.path.getsize(log.name) - log_start
    return result
