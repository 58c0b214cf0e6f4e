"""Small helpers shared by the tests: reading codes from the outbox, driving the API."""
from __future__ import annotations

import json
import re
from typing import Any

import boto3

from tests.conftest import post_json, wait_for

SUBSCRIBER = ("13812345678", "12345X")  # local/fixtures/subscribers.csv, active, cmcc


def _registry_ids() -> list[str]:
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "chalicelib", "data",
                        "companies.json")
    with open(path, encoding="utf-8") as fh:
        return [entry["id"] for entry in json.load(fh)["companies"]]


COMPANIES = _registry_ids()  # the bundled registry, in its order: tests never list companies themselves


def latest_code(stack: Any, phone: str) -> str:
    for line in reversed(stack.read_outbox()):
        if line["phone"] == phone and "验证码" in line["message"]:
            return re.search(r"验证码为(\d{6})", line["message"]).group(1)  # type: ignore[union-attr]
    raise AssertionError(f"no code SMS for {phone}")


def request_code(api: Any, phone: str) -> Any:
    return post_json(api, "/v1/verification-codes", {"phone": phone})


def submit(api: Any, stack: Any, phone: str, id_last6: str, code: str | None = None) -> Any:
    if code is None:
        assert request_code(api, phone).status_code == 202
        code = latest_code(stack, phone)
    return post_json(api, "/v1/queries", {"phone": phone, "id_last6": id_last6, "code": code})


def error_code(response: Any) -> str:
    return json.loads(response.body)["error"]["code"]


def execution_arn(stack: Any, query_id: str) -> str:
    return stack.env["STATE_MACHINE_ARN"].replace(":stateMachine:", ":execution:") + ":" + query_id


def wait_finished(stack: Any, query_id: str, timeout: float = 60) -> dict[str, Any]:
    sfn = boto3.client("stepfunctions")
    arn = execution_arn(stack, query_id)

    def finished() -> dict[str, Any] | None:
        try:
            described = sfn.describe_execution(executionArn=arn)
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    return wait_for(finished, timeout, f"execution {query_id} to finish")  # type: ignore[no-any-return]


def history(stack: Any, query_id: str) -> list[dict[str, Any]]:
    sfn = boto3.client("stepfunctions")
    return sfn.get_execution_history(executionArn=execution_arn(stack, query_id), maxResults=1000)["events"]


def replies_to(stack: Any, phone: str) -> list[str]:
    return [m["message"] for m in stack.read_outbox() if m["phone"] == phone and "验证码" not in m["message"]]
