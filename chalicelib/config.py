"""Settings read once from the environment: every table, key, secret and deadline.

Nothing else in chalicelib reads os.environ, so the stage configuration in
.chalice/config.json (and the local stack / tests) is the one place to look.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from chalicelib.storage.tables import table_name


@dataclass(frozen=True)
class Settings:
    codes_table: str
    throttle_table: str
    queries_table: str
    lookups_table: str
    circuits_table: str
    idempotency_table: str
    kms_key_id: str
    pepper_secret_name: str
    state_machine_arn: str
    start_queue_url: str
    retry_queue_url: str
    public_api_url: str
    sms_sender_id: str
    query_deadline_seconds: int
    code_ttl_seconds: int
    code_resend_seconds: int
    code_daily_limit: int
    code_ip_hourly_limit: int
    sms_codes_per_second: int
    sms_rate_shards: int
    conflict_retries: int
    query_ip_hourly_limit: int
    query_interval_seconds: int
    query_record_days: int
    company_registry_file: str
    carrier_registry_file: str
    operator_registry_file: str
    secret_max_age_seconds: int
    circuit_failure_threshold: int
    circuit_probe_seconds: int
    delivery_budget_seconds: int
    partner_max_account_count: int
    task_first_backoff_seconds: int = 2
    disputes_table: str = "yztc-disputes"
    reported_table: str = "yztc-reported"
    dispute_state_machine_arn: str = ""
    dispute_deadline_seconds: int = 1296000
    dispute_daily_limit: int = 3
    release_deadline_seconds: int = 1296000
    release_interval_seconds: int = 2592000
    dispute_record_days: int = 30
    reply_queue_url: str = ""
    deadline_state_machine_arn: str = ""
    deadline_slot_seconds: int = 60
    deadline_shards: int = 16
    deadline_lead_slots: int = 10
    deadline_budget_seconds: int = 240
    reply_reclaim_seconds: int = 300
    # SPEC §3 proof of work: codes beyond these need a solved ALTCHA challenge.
    code_free_per_number: int = 2  # codes for one number in one (Beijing) day
    code_free_per_client: int = 20  # code requests from one client in an hour
    altcha_secret_name: str = "yztc/altcha"
    altcha_max_number: int = 250_000  # 125,000 SHA-256 on average: about 1 s in a phone's browser
    challenge_ttl_seconds: int = 300


# The queues the SQS handlers are subscribed to, by the variable that names each, and each one's default name.
QUEUES: dict[str, str] = {
    "START_QUEUE_NAME": "yztc-query-starts",
    "RETRY_QUEUE_NAME": "yztc-lookup-retries",
    "REPLY_QUEUE_NAME": "yztc-replies",
    "REPLY_DLQ_NAME": "yztc-replies-dead",
}


def queue_name(var: str) -> str:
    """A queue's name, read when its handler is registered (at import): `chalice package` takes the event
    source from it (the Makefile sets each stage's names). Not part of Settings, which is built on first use."""
    return os.environ.get(var, QUEUES[var])


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


@functools.cache
def settings() -> Settings:
    here = os.path.dirname(__file__)
    return Settings(
        codes_table=table_name("CODES_TABLE"),
        throttle_table=table_name("THROTTLE_TABLE"),
        queries_table=table_name("QUERIES_TABLE"),
        lookups_table=table_name("LOOKUPS_TABLE"),
        circuits_table=table_name("CIRCUITS_TABLE"),
        idempotency_table=table_name("IDEMPOTENCY_TABLE"),
        kms_key_id=os.environ.get("KMS_KEY_ID", "alias/yztc"),
        pepper_secret_name=os.environ.get("PEPPER_SECRET_NAME", "yztc/pepper"),
        state_machine_arn=os.environ.get("STATE_MACHINE_ARN", ""),
        start_queue_url=os.environ.get("START_QUEUE_URL", ""),
        retry_queue_url=os.environ.get("RETRY_QUEUE_URL", ""),
        public_api_url=os.environ.get("PUBLIC_API_URL", "").rstrip("/"),
        sms_sender_id=os.environ.get("SMS_SENDER_ID", "10699000"),
        query_deadline_seconds=_int("QUERY_DEADLINE_SECONDS", 172800),
        code_ttl_seconds=_int("CODE_TTL_SECONDS", 300),
        code_resend_seconds=_int("CODE_RESEND_SECONDS", 60),
        code_daily_limit=_int("CODE_DAILY_LIMIT", 10),
        # Per-IP limits are backstops, not the first line of defence (that is the WAF's rate rule):
        # carrier-grade NAT puts very many subscribers of a mobile network behind one address.
        code_ip_hourly_limit=_int("CODE_IP_HOURLY_LIMIT", 600),
        # What the SMS origination identity sends per second (a short code: ~100 parts/s).
        sms_codes_per_second=_int("SMS_CODES_PER_SECOND", 100),
        # The per-second channel counter is split over this many items (limit/shards each), so code
        # requests do not all write one DynamoDB item and cancel each other (TransactionConflict).
        sms_rate_shards=_int("SMS_RATE_SHARDS", 10),
        # Times a transaction cancelled by TransactionConflict is tried again (with jitter) before
        # the request is answered 503 service_busy.
        conflict_retries=_int("CONFLICT_RETRIES", 3),
        query_ip_hourly_limit=_int("QUERY_IP_HOURLY_LIMIT", 600),
        query_interval_seconds=_int("QUERY_INTERVAL_SECONDS", 86400),
        query_record_days=_int("QUERY_RECORD_DAYS", 7),
        company_registry_file=os.environ.get(
            "COMPANY_REGISTRY_FILE", os.path.join(here, "data", "companies.json")),
        carrier_registry_file=os.environ.get(
            "CARRIER_REGISTRY_FILE", os.path.join(here, "data", "carriers.json")),
        operator_registry_file=os.environ.get(
            "OPERATOR_REGISTRY_FILE", os.path.join(here, "data", "operators.json")),
        secret_max_age_seconds=_int("SECRET_MAX_AGE_SECONDS", 300),
        # SPEC §4: the circuit opens when a partner answered nothing for 30 s while at least 5 transient
        # failures came in; then a partner gets at most one probe a minute.
        circuit_failure_threshold=min(5, _int("CIRCUIT_FAILURE_THRESHOLD", 5)),
        circuit_probe_seconds=max(60, _int("CIRCUIT_PROBE_SECONDS", 60)),
        # How long one run of the per-minute delivery job may replay a backlog (its Lambda timeout is 60 s).
        delivery_budget_seconds=_int("DELIVERY_BUDGET_SECONDS", 40),
        partner_max_account_count=_int("PARTNER_MAX_ACCOUNT_COUNT", 100_000),
        # A partner task's first backoff after a transient failure, doubling per failure up to 15 min (2 s
        # deployed and in `make run`). The tests' stack sets 1 s: whole-query tests wait out less real backoff.
        task_first_backoff_seconds=max(1, _int("TASK_FIRST_BACKOFF_SECONDS", 2)),
        # SPEC §8: disputes, their 15-day answer deadline, at most 3 per number a day.
        disputes_table=table_name("DISPUTES_TABLE"),
        reported_table=table_name("REPORTED_TABLE"),
        dispute_state_machine_arn=os.environ.get("DISPUTE_STATE_MACHINE_ARN", ""),
        dispute_deadline_seconds=_int("DISPUTE_DEADLINE_SECONDS", 1296000),
        dispute_daily_limit=_int("DISPUTE_DAILY_LIMIT", 3),
        # SPEC §10.2: a release's companies have 15 days; one release per number per 30 days from the carrier's match.
        release_deadline_seconds=_int("RELEASE_DEADLINE_SECONDS", 1296000),
        release_interval_seconds=_int("RELEASE_INTERVAL_SECONDS", 2592000),
        # How long GET /v1/disputes/{id} keeps answering after the deadline.
        dispute_record_days=_int("DISPUTE_RECORD_DAYS", 30),
        # SPEC §2: one reply route (an SQS queue), and deadlines kept by one Step Functions execution
        # per kind and slot (a minute deployed), started DEADLINE_LEAD_SLOTS slots ahead.
        reply_queue_url=os.environ.get("REPLY_QUEUE_URL", ""),
        deadline_state_machine_arn=os.environ.get("DEADLINE_STATE_MACHINE_ARN", ""),
        deadline_slot_seconds=max(1, _int("DEADLINE_SLOT_SECONDS", 60)),
        deadline_lead_slots=_int("DEADLINE_LEAD_SLOTS", 10),
        # Partitions of the deadline index per kind: "due by now" is one range query per shard, each
        # shard takes ≈ 1,000 claims/s. Raising it is safe (lower shards are still swept); lowering it on
        # a live table would strand the records of the dropped shards.
        deadline_shards=max(1, _int("DEADLINE_SHARDS", 16)),
        # How long one DeadlineStep invocation sweeps before the execution loops (its Lambda timeout: 300 s).
        deadline_budget_seconds=_int("DEADLINE_BUDGET_SECONDS", 240),
        # A claimed completion whose reply is not committed by then is claimed and enqueued again.
        reply_reclaim_seconds=_int("REPLY_RECLAIM_SECONDS", 300),
        code_free_per_number=_int("CODE_FREE_PER_NUMBER", 2),
        code_free_per_client=_int("CODE_FREE_PER_CLIENT", 20),
        altcha_secret_name=os.environ.get("ALTCHA_SECRET_NAME", "yztc/altcha"),
        altcha_max_number=_int("ALTCHA_MAX_NUMBER", 250_000),
        challenge_ttl_seconds=_int("CHALLENGE_TTL_SECONDS", 300),
    )
