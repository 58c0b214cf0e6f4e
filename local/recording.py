"""Record every AWS request moto receives in-process, by the deployed function it serves.

Used by the IAM test (what each function calls must be what its role grants) and by
`make bench` (AWS calls per query). Threads say which function they stand in for with
local.lambdas.acting_as; unlabelled requests (moto's interpreter, the harness) are skipped.
"""
from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from local.lambdas import CURRENT, acting_as


class CallRecorder:
    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str]] = Counter()  # (function, "service:Operation")
        self.calls: Counter[tuple[str, str, str]] = Counter()  # (function, IAM action, resource)
        self._lock = threading.Lock()

    def record(self, request: Any) -> None:
        """Resource: a table ("name", "name/index/x" for an index), a queue or secret name, or "" for the rest."""
        function = getattr(CURRENT, "function", None)
        if function is None:
            return
        host = re.match(r"https?://([a-z0-9-]+)\.", request.url).group(1)  # type: ignore[union-attr]
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        target = request.headers.get("X-Amz-Target")
        target = target.decode() if isinstance(target, bytes) else target
        operation = target.split(".")[-1] if target else parse_qs(body).get("Action", [""])[0]
        params = json.loads(body) if target and body else {}
        items = []
        if operation == "TransactWriteItems":  # authorised item by item
            for item in params["TransactItems"]:
                ((kind, spec),) = item.items()
                action = "ConditionCheckItem" if kind == "ConditionCheck" else f"{kind}Item"
                items.append((f"dynamodb:{action}", spec["TableName"]))
        elif operation in ("BatchGetItem", "BatchWriteItem"):  # authorised table by table
            items += [(f"dynamodb:{operation}", table) for table in params["RequestItems"]]
        else:
            index = f"/index/{params['IndexName']}" if params.get("IndexName") else ""
            resource = {"dynamodb": params.get("TableName", "") + index,  # a Query on an index: the index
                        "sqs": params.get("QueueUrl", "").rsplit("/", 1)[-1],
                        "secretsmanager": params.get("SecretId", "")}.get(host, "")
            items.append((f"{host}:{operation}", resource))
        with self._lock:
            self.requests[(function, f"{host}:{operation}")] += 1
            for action, table in items:
                self.calls[(function, action, table)] += 1


@contextlib.contextmanager
def recording() -> Iterator[CallRecorder]:
    from moto.core.botocore_stubber import BotocoreStubber

    recorder = CallRecorder()
    original = BotocoreStubber.process_request

    def process_request(self: Any, request: Any) -> Any:
        recorder.record(request)
        return original(self, request)

    # A function's thread pools (the fan-out, the delivery job) work for that function: their
    # threads carry the label of the thread that submitted the work.
    original_submit = ThreadPoolExecutor.submit

    def submit(self: ThreadPoolExecutor, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        function = getattr(CURRENT, "function", None)
        if function is None:
            return original_submit(self, fn, *args, **kwargs)

        def labelled(*a: Any, **k: Any) -> Any:
            with acting_as(function):
                return fn(*a, **k)

        return original_submit(self, labelled, *args, **kwargs)

    BotocoreStubber.process_request = process_request  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign, assignment]
    try:
        yield recorder
    finally:
        BotocoreStubber.process_request = original  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = original_submit  # type: ignore[method-assign]
