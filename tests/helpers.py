"""Small helpers shared by the tests: reading codes from the outbox, driving the API."""
from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

import time_machine

from tests.conftest import NEWCOMER_ENV, post_json, unshared_port, wait_for

SUBSCRIBER = ("13812345678", "12345X")  # local/fixtures/subscribers.csv, active, cmcc


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bundled(kind: str) -> list[dict[str, Any]]:
    """The registry chalicelib/data ships ("companies" or "operators"), its entries in its order."""
    with open(os.path.join(ROOT, "chalicelib", "data", f"{kind}.json"), encoding="utf-8") as fh:
        return list(json.load(fh)[kind])


def _fixture_operators() -> set[str]:
    """The operators local/fixtures gives cards (cards.csv) or a mode (operators.csv)."""
    spoken_of: set[str] = set()
    for fixture in ("cards.csv", "operators.csv"):
        with open(os.path.join(ROOT, "local", "fixtures", fixture), encoding="utf-8") as fh:
            spoken_of |= {row["operator"] for row in csv.DictReader(fh)}
    return spoken_of


COMPANIES = [entry["id"] for entry in bundled("companies")]  # tests never list companies themselves
# The bundled operator registry (132), and the operators the fixtures speak of (26 of them, every group), in the
# registry's order: what a card test's SMS and modes name. A stack registering only those (StackOptions.operators)
# asks a fifth as many operators per card query; tests about the registry's size (every operator asked, a 133rd
# joining by data alone) register it whole.
OPERATORS = [entry["id"] for entry in bundled("operators")]
FIXTURE_OPERATORS = tuple(op for op in OPERATORS if op in _fixture_operators())


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


def aws(service: str) -> Any:
    """The test's client of `service`: the app's cached one (tests/conftest.py resets them per test), not a new
    client per call, which costs 60 ms of CPU each and the helpers below are called many times a test."""
    from chalicelib import clients

    return clients.client(service)


def circuit(partner: str) -> dict[str, Any]:
    """A partner's circuit as the table holds it (closed, no failures, when it has no item)."""
    from chalicelib.storage.models import PartnerCircuit

    try:
        item = PartnerCircuit.get(partner, consistent_read=True)
    except PartnerCircuit.DoesNotExist:
        return {"is_open": False, "failures": 0, "next_probe_at": 0}
    return {"is_open": bool(item.is_open), "failures": int(item.failures or 0),
            "next_probe_at": int(item.next_probe_at or 0)}


def lookup_states(query_id: str) -> dict[str, str]:
    """partner -> the state of its lookup for a query (a company's, or an operator's for a card query)."""
    from chalicelib.storage.models import Lookup

    return {item.company: item.state for item in Lookup.scan(Lookup.query_id == query_id)}


def deadline_of(stack: Any, query_id: str) -> int:
    """The deadline (epoch seconds) of a record in the queries table (a query of either kind, or a release)."""
    item = aws("dynamodb").get_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}},
                                    ConsistentRead=True)["Item"]
    return int(item["deadline_at"]["N"])


@contextlib.contextmanager
def clock_past(epoch: float) -> Iterator[None]:
    """Every clock of the process (the stack's, moto's, the simulators') a second past `epoch` and ticking on, so
    a deadline or a circuit's window passes without the test sleeping it out. The stack runs as it would then:
    the next deadline execution sweeps every slot it missed, SQS delays are due, the circuit reads the new time.
    Timers and Wait states still count real seconds. Stay inside until what the test waits for has happened:
    back on the real clock, what was stamped meanwhile lies in the future."""
    with time_machine.travel(max(epoch, time.time()) + 1, tick=True):
        yield


def wait_finished(stack: Any, query_id: str, timeout: float = 60) -> dict[str, Any]:
    """The query's execution has ended and its one reply is committed (it ends before partners answer:
    the reply comes from the reply queue, sent by the last answer or the deadline)."""
    sfn = aws("stepfunctions")
    arn = execution_arn(stack, query_id)

    def finished() -> dict[str, Any] | None:
        try:
            described = sfn.describe_execution(executionArn=arn)
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    execution = wait_for(finished, timeout, f"execution {query_id} to finish")
    wait_closed(stack, query_id, timeout)
    return execution  # type: ignore[no-any-return]


def wait_closed(stack: Any, query_id: str, timeout: float = 60) -> dict[str, Any]:
    """The query's reply is committed: a terminal status, out of the deadline index."""
    from boto3.dynamodb.types import TypeDeserializer

    deserialize = TypeDeserializer().deserialize

    def closed() -> dict[str, Any] | None:
        found = aws("dynamodb").get_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}},
                                         ConsistentRead=True).get("Item")
        if found is None:
            return {"query_id": None}  # not a query (a dispute id): nothing to wait for
        item = {name: deserialize(value) for name, value in found.items()}
        done = item.get("status") in ("replied", "failed") and "deadline_slot" not in item
        return item if done else None

    return wait_for(closed, timeout, f"query {query_id} to be replied")  # type: ignore[no-any-return]


def history(stack: Any, query_id: str) -> list[dict[str, Any]]:
    arn = execution_arn(stack, query_id)
    return aws("stepfunctions").get_execution_history(executionArn=arn, maxResults=1000)["events"]  # type: ignore[no-any-return]


def replies_to(stack: Any, phone: str) -> list[str]:
    # A stack without the reply poller (tests/conftest.py, routes_only) sends none: "no reply" would be true of it
    # whatever the service did.
    assert stack.options.replies, "a routes_only stack sends no reply: this test needs the pollers"
    return [m["message"] for m in stack.read_outbox() if m["phone"] == phone and "验证码" not in m["message"]]


@contextlib.contextmanager
def make_run(workdir: Any, **env: str) -> Iterator[dict[str, Any]]:
    """`python -m local.run` as `make run` starts it, on free ports, with the shell's environment plus `env`;
    yields once the API serves, and stops it (SIGTERM, then kill) afterwards."""
    import subprocess
    import sys

    import requests

    api_port, moto_port = unshared_port(), unshared_port()  # not from bind(0): bound seconds later
    full_env = {**NEWCOMER_ENV, "API_PORT": str(api_port), "MOTO_PORT": str(moto_port), "SIMULATOR_PORTS": "any",
                "LOCAL_WORKDIR": str(workdir), **env}
    with open(os.path.join(str(workdir), "run.log"), "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "local.run"], cwd=ROOT, env=full_env, stdout=log,
                                   stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{api_port}"

        def up() -> bool:
            assert process.poll() is None, open(os.path.join(str(workdir), "run.log")).read()
            try:
                return requests.get(f"{base}/v1/companies", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        try:
            wait_for(up, 60, "the local stack to serve")
            yield {"base": base, "moto": f"http://127.0.0.1:{moto_port}", "workdir": workdir, "process": process}
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()


class FakeTime:
    """A clock that moves only when the code under test waits (its `sleep`)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)


def post_from(stack: Any, source: str, path: str, body: dict[str, Any] | bytes,
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    """Over real HTTP to the local API from the loopback address `source` (SPEC §7: its client IP), so a test
    speaks as several clients (each with its own wrong-try and rate limits, SPEC §3)."""
    conn = http.client.HTTPConnection("127.0.0.1", stack.options.api_port, timeout=60, source_address=(source, 0))
    try:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        conn.request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        conn.close()
