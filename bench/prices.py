"""Every price, quota and assumption `make bench` uses: one table each, nowhere else.

Prices: us-east-1 list prices, USD, as stated in issue 8. SMS is excluded (the same two messages
whatever the architecture); so are CloudWatch Logs (shown apart), X-Ray and data transfer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



@dataclass(frozen=True)
class Price:
    usd: float
    per: int
    unit: str

    @property
    def each(self) -> float:
        return self.usd / self.per

    def __str__(self) -> str:
        usd = f"{self.usd:.10f}".rstrip("0").rstrip(".")
        return f"${usd} per {self.per:,} {self.unit}" if self.per != 1 else f"${usd} per {self.unit}"


# The one price table (USD). Every figure `make bench` prints in dollars comes from here.
PRICES: dict[str, Price] = {
    "Step Functions": Price(0.025, 1_000, "state transitions"),  # Standard: every state entered
    "Lambda requests": Price(0.20, 1_000_000, "invocations"),
    "Lambda GB-s": Price(0.0000166667, 1, "GB-s"),  # billed duration rounded up to 1 ms
    "API Gateway": Price(3.50, 1_000_000, "REST requests"),
    "DynamoDB writes": Price(0.625, 1_000_000, "WRU"),  # on-demand write request units
    "DynamoDB reads": Price(0.125, 1_000_000, "RRU"),  # on-demand read request units
    "KMS": Price(0.03, 10_000, "requests"),
    "SQS": Price(0.40, 1_000_000, "requests"),  # standard queue, per 64 KB chunk
    "Secrets Manager": Price(0.05, 10_000, "API calls"),  # the monthly per-secret fee left out
    "CloudWatch Logs": Price(0.50, 1, "GB ingested"),  # shown for information, not in the totals
}

# Default quotas per account and region on a query's path (large regions; /work/shared/FIELD-NOTES.md).
# All adjustable by request unless said otherwise.
QUOTAS: dict[str, float] = {
    # https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html (Standard workflows; us-east-1,
    # us-west-2, eu-west-1: StartExecution bucket 1,300, refill 300/s; state transitions bucket 5,000, refill
    # 5,000/s; other regions 150/s and 800/s)
    "start_execution_refill_per_second": 300,
    "state_transitions_refill_per_second": 5_000,
    "open_executions": 1_000_000,
    # https://docs.aws.amazon.com/apigateway/latest/developerguide/limits.html (account throttle, per region)
    "api_gateway_requests_per_second": 10_000,
    # https://docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html (concurrent executions, per region)
    "lambda_concurrent_executions": 1_000,
    # https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/ServiceQuotas.html (on-demand, per table)
    "dynamodb_table_write_units_per_second": 40_000,
    "dynamodb_table_read_units_per_second": 40_000,
    # https://docs.aws.amazon.com/general/latest/gr/sns.html (SMS: transactional messages per second, per
    # account; raised by a support case, and bounded in practice by the origination identity's throughput)
    "sns_sms_per_second": 20,
    # https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html ("Cryptographic operations
    # (symmetric) request rate", shared by Decrypt, Encrypt, GenerateDataKey, GenerateDataKeyWithoutPlaintext,
    # GenerateMac, GenerateRandom, ReEncrypt, VerifyMac, per account and region; adjustable, as every KMS request
    # quota but the CloudHSM key store's): 100,000/s in us-east-1, us-west-2 and eu-west-1 (the regions of the
    # Step Functions quotas above); 20,000/s in us-east-2, ap-southeast-1, ap-southeast-2, ap-northeast-1,
    # eu-central-1, eu-west-2; 10,000/s elsewhere
    "kms_symmetric_requests_per_second": 100_000,
}

# The Step Functions quotas above (us-east-1, the region of the prices), cited in the report.
STEP_FUNCTIONS_QUOTAS_URL = "https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html"
KMS_QUOTAS_URL = "https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html"

# Assumptions where the local stack cannot measure what AWS would do.
ASSUMPTIONS: dict[str, Any] = {
    # The per-minute delivery job costs the same whatever the traffic; it is spread over the
    # queries of that minute at this (deliberately low) national rate.
    "reference_queries_per_second": 1.0,
    # Lambda's SQS event source: one ReceiveMessage and one DeleteMessageBatch per batch it hands
    # a function (its idle long polls are a fixed cost per queue, left out).
    "sqs_requests_per_consumer_batch": 2,
    # SMS per query (a code and the reply): what the SNS quota above is divided by.
    "sms_per_query": 2,
    # Billed Lambda duration per invocation on AWS (warm container, ~10 ms per in-region AWS request,
    # ~100-200 ms per carrier or partner round trip). Durations on moto in-process are printed next to
    # these for comparison, but not priced: on two shared cores they move with the machine's load.
    "lambda_billed_ms": {
        "APIHandler": 50,       # a code, a submission or a callback: 3-6 AWS requests
        "StartQueries": 30,     # one StartExecution per message
        "VerifyCarrier": 150,   # the carrier's round trip and 3-4 AWS requests
        "AskCompanies": 250,    # every partner at once (the slowest 200/202) and ~6 sequential AWS requests
        "SendReplies": 80,      # a reply-queue batch: 4-6 AWS requests per reply, SNS included
        "RepliesFailed": 30,    # a dead letter: one conditional write
        "RetryLookups": 200,    # a partner's round trip and 4-5 AWS requests
        "DeliverBacklog": 150,  # the backlog index reads; a probe's round trip while a circuit is open
        "StartDeadlines": 40,   # one ListExecutions, then the slots not running: ~1 StartExecution per kind
        "DeadlineStep": 60,     # 16 range queries of the deadline index (empty, mostly) + the claims due
        "ForwardDispute": 200,  # the company's round trip (a 200 or a 202) and 4-5 AWS requests
    },
    # The same for a phone-card query (SPEC §9) where it differs: AskCompanies asks 132 operators with 16
    # threads, 9 rounds of (a Lookup PutItem ~10 ms + the operator's round trip ~150-200 ms) + its own
    # ~6 sequential requests.
    "lambda_billed_ms_cards": {
        "AskCompanies": 2_000,
    },
}

# DynamoDB capacity units (on-demand): reads per 4 KB, writes per 1 KB, transactions double.
READ_UNIT_BYTES = 4096
WRITE_UNIT_BYTES = 1024
INDEX_ENTRY_OVERHEAD_BYTES = 100


def chalice_config() -> dict[str, Any]:
    with open(os.path.join(ROOT, ".chalice", "config.json"), encoding="utf-8") as fh:
        config: dict[str, Any] = json.load(fh)
    return config


def lambda_memory_mb(function: str, stage: str = "prod") -> int:
    """A function's configured memory, with Chalice's precedence: stage function, stage, function, top."""
    config = chalice_config()
    stage_config = config.get("stages", {}).get(stage, {})
    for scope in (stage_config.get("lambda_functions", {}).get(function, {}), stage_config,
                  config.get("lambda_functions", {}).get(function, {}), config):
        if "lambda_memory_size" in scope:
            return int(scope["lambda_memory_size"])
    return 128  # Chalice's default


def production_deadline_seconds(stage: str = "prod") -> int:
    """QUERY_DEADLINE_SECONDS as deployed (48 h), from .chalice/config.json."""
    config = chalice_config()
    stage_env = config.get("stages", {}).get(stage, {}).get("environment_variables", {})
    return int(stage_env.get("QUERY_DEADLINE_SECONDS", config["environment_variables"]["QUERY_DEADLINE_SECONDS"]))
