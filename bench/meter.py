"""What a run of the local stack asked of AWS, priced the way AWS bills it.

- every AWS request moto receives in-process, by the function the thread stands in for
  (local.lambdas.acting_as), as local/recording.py counts them, and also those made by the
  function's thread pools (the fan-out, the delivery job): a worker inherits its submitter's label;
- DynamoDB read and write request units per request, from the items themselves: reads per
  4 KB (eventually consistent half price, GSI queries always eventual), writes per 1 KB of the
  larger of the old and new item, transactions twice, plus the writes a global secondary index
  takes when an item enters, leaves or changes in it;
- every Lambda invocation (API routes, workflow steps, queue batches, scheduled runs) and its
  in-process duration; every API Gateway request by route.
Unlabelled requests (moto's interpreter, the harness itself) are not counted.
"""
from __future__ import annotations

import base64
import contextlib
import json
import math
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from bench.prices import INDEX_ENTRY_OVERHEAD_BYTES, READ_UNIT_BYTES, WRITE_UNIT_BYTES
from local.lambdas import CURRENT, acting_as

API_HANDLER = "APIHandler"
ROUTES = (  # API Gateway requests by route; the status check is the citizen's choice, not per query
    ("code", "POST", re.compile(r"/v1/verification-codes")),
    ("submit", "POST", re.compile(r"/v1/queries")),
    ("status", "GET", re.compile(r"/v1/queries/[^/]+")),
    ("callback", "POST", re.compile(r"/v1/partners/[^/]+/results")),
    ("card submit", "POST", re.compile(r"/v1/card-queries")),
    ("card status", "GET", re.compile(r"/v1/card-queries/[^/]+")),
    ("operator callback", "POST", re.compile(r"/v1/operators/[^/]+/results")),
    ("release submit", "POST", re.compile(r"/v1/number-releases")),
    ("release status", "GET", re.compile(r"/v1/number-releases/[^/]+")),
    ("release callback", "POST", re.compile(r"/v1/partners/[^/]+/releases")),
)
_READS = {"GetItem", "BatchGetItem", "Query", "Scan", "TransactGetItems"}
_WRITES = {"PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"}


def label() -> str | None:
    function: str | None = getattr(CURRENT, "function", None)
    return function


@dataclass
class Capacity:
    rru: float = 0.0
    wru: float = 0.0
    reads: float = 0  # requests (a per-query mean once divided)
    writes: float = 0

    def add(self, other: Capacity) -> None:
        self.rru += other.rru
        self.wru += other.wru
        self.reads += other.reads
        self.writes += other.writes


@dataclass
class Meter:
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)  # (function, "service:Operation")
    capacity: dict[str, Capacity] = field(default_factory=lambda: defaultdict(Capacity))  # function -> units
    durations: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # function -> seconds
    api: Counter[tuple[str, str]] = field(default_factory=Counter)  # (function label, route)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # DynamoDB by (function, table, operation): units, and the largest item a write left or replaced (bytes)
    tables: dict[tuple[str, str, str], Capacity] = field(default_factory=lambda: defaultdict(Capacity))
    largest: dict[tuple[str, str, str], int] = field(default_factory=lambda: defaultdict(int))

    # -- Lambda invocations ------------------------------------------------------------
    def timed(self, function: str, handler: Callable[..., Any]) -> Callable[..., Any]:
        """The handler, recording one invocation of `function` and its duration each call."""

        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return handler(*args, **kwargs)
            finally:
                self.invoked(function, time.perf_counter() - started)

        return run

    def invoked(self, function: str, seconds: float) -> None:
        with self._lock:
            self.durations[function].append(seconds)

    def invocations(self, function: str) -> int:
        return len(self.durations.get(function, []))

    # -- AWS requests ------------------------------------------------------------------------
    def record(self, function: str, host: str, operation: str, capacity: Capacity | None,
               tables: dict[str, tuple[Capacity, int]] | None = None) -> None:
        """One request; `tables`: its units split by the table they fall on, with the largest item size there
        (a batch or a transaction may span tables; each table counts the request once)."""
        with self._lock:
            self.requests[(function, f"{host}:{operation}")] += 1
            if capacity is not None:
                self.capacity[function].add(capacity)
            for table, (units, size) in (tables or {}).items():
                self.tables[(function, table, operation)].add(units)
                self.largest[(function, table, operation)] = max(self.largest[(function, table, operation)], size)

    def clear(self) -> None:
        """Forget everything counted so far (a warm-up is not measured)."""
        with self._lock:
            for counts in (self.requests, self.capacity, self.durations, self.api, self.tables, self.largest):
                counts.clear()

    def snapshot(self) -> Meter:
        """A copy of the counts so far (to subtract one phase from another)."""
        with self._lock:
            copy = Meter(Counter(self.requests), defaultdict(Capacity), defaultdict(list), Counter(self.api))
            for function, units in self.capacity.items():
                copy.capacity[function].add(units)
            for function, seconds in self.durations.items():
                copy.durations[function] = list(seconds)
            for key, units in self.tables.items():
                copy.tables[key].add(units)
            copy.largest.update(self.largest)
        return copy


# -- DynamoDB request units ------------------------------------------------------------------
def _attribute_size(value: dict[str, Any]) -> int:
    ((kind, data),) = value.items()
    if kind == "S":
        return len(data.encode())
    if kind == "N":
        return len(str(data))
    if kind == "B":
        return len(base64.b64decode(data))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS"):
        return sum(len(str(v).encode()) for v in data)
    if kind == "BS":
        return sum(len(base64.b64decode(v)) for v in data)
    if kind == "L":
        return 3 + sum(1 + _attribute_size(v) for v in data)
    if kind == "M":
        return 3 + sum(1 + len(k.encode()) + _attribute_size(v) for k, v in data.items())
    raise ValueError(kind)


def item_size(item: dict[str, Any] | None) -> int:
    if not item:
        return 0
    return sum(len(name.encode()) + _attribute_size(value) for name, value in item.items())


def _read_units(size: int, consistent: bool) -> float:
    return max(1, math.ceil(size / READ_UNIT_BYTES)) * (1.0 if consistent else 0.5)


def _write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def _backend() -> Any:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.dynamodb.models import dynamodb_backends

    return dynamodb_backends[DEFAULT_ACCOUNT_ID]["us-east-1"]


def _current_item(table_name: str, key: dict[str, Any]) -> dict[str, Any] | None:
    try:
        item = _backend().get_item(table_name, key)
    except Exception:  # no such table: the request fails, one unit is still charged below
        return None
    return item.to_json()["Attributes"] if item is not None else None  # type: ignore[no-any-return]


def _key_of(table_name: str, item: dict[str, Any]) -> dict[str, Any]:
    table = _backend().get_table(table_name)
    names = [n for n in (table.hash_key_attr, table.range_key_attr) if n]
    return {n: item[n] for n in names if n in item}


def _index_writes(table_name: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> int:
    """Writes the table's global secondary indexes take: 1 in or out, 2 when the index key moves."""
    try:
        indexes = _backend().get_table(table_name).global_indexes
    except Exception:
        return 0
    writes = 0
    for index in indexes:
        names = index.schema_key_attrs
        old_in = old is not None and all(n in old for n in names)
        new_in = new is not None and all(n in new for n in names)
        if old_in and new_in:
            assert old is not None and new is not None
            if any(old[n] != new[n] for n in names):
                writes += 2
            elif old != new:
                writes += 1
        elif old_in or new_in:
            writes += 1
    return writes


def _write_targets(operation: str, params: dict[str, Any]) -> list[tuple[str, dict[str, Any], int]]:
    """(table, key, cost multiplier) for every item a write request touches."""
    if operation == "PutItem":
        return [(params["TableName"], _key_of(params["TableName"], params["Item"]), 1)]
    if operation in ("UpdateItem", "DeleteItem"):
        return [(params["TableName"], params["Key"], 1)]
    targets = []
    if operation == "TransactWriteItems":
        for entry in params["TransactItems"]:
            ((kind, spec),) = entry.items()
            key = _key_of(spec["TableName"], spec["Item"]) if kind == "Put" else spec["Key"]
            targets.append((spec["TableName"], key, 2))
    elif operation == "BatchWriteItem":
        for table, writes in params["RequestItems"].items():
            for write in writes:
                ((kind, spec),) = write.items()
                targets.append((table, _key_of(table, spec["Item"]) if kind == "PutRequest" else spec["Key"], 1))
    return targets


def _write_capacity(targets: list[tuple[str, dict[str, Any], int]], before: list[dict[str, Any] | None],
                    after: list[dict[str, Any] | None]) -> tuple[Capacity, dict[str, tuple[Capacity, int]]]:
    """(the request's units, the same split by table with the largest item written there)."""
    units = Capacity(writes=1)
    tables: dict[str, tuple[Capacity, int]] = {}
    for (table, _, multiplier), old, new in zip(targets, before, after, strict=True):
        index_writes = _index_writes(table, old, new)
        size = max(item_size(old), item_size(new))
        wru = multiplier * _write_units(size) + index_writes * _write_units(size + INDEX_ENTRY_OVERHEAD_BYTES)
        units.wru += wru
        on_table, largest = tables.get(table, (Capacity(writes=1), 0))
        on_table.wru += wru
        tables[table] = (on_table, max(largest, size))
    return units, tables


def _table_of(params: dict[str, Any]) -> str:
    """The table a single-table request names."""
    return str(params.get("TableName", "?"))


def _read_capacity(operation: str, params: dict[str, Any],
                   reply: dict[str, Any]) -> tuple[Capacity, dict[str, tuple[Capacity, int]]]:
    """(the request's units, the same split by table)."""
    by_table: dict[str, float] = {}
    if operation == "GetItem":
        by_table[_table_of(params)] = _read_units(item_size(reply.get("Item")), bool(params.get("ConsistentRead")))
    elif operation == "BatchGetItem":
        for table, spec in params["RequestItems"].items():
            found = reply.get("Responses", {}).get(table, [])
            consistent = bool(spec.get("ConsistentRead"))
            by_table[table] = (sum(_read_units(item_size(i), consistent) for i in found)
                               + max(0, len(spec["Keys"]) - len(found)) * _read_units(0, consistent))
    elif operation in ("Query", "Scan"):
        consistent = bool(params.get("ConsistentRead")) and "IndexName" not in params
        by_table[_table_of(params)] = _read_units(sum(item_size(i) for i in reply.get("Items", [])), consistent)
    elif operation == "TransactGetItems":
        entries = [spec for entry in params.get("TransactItems", []) for spec in entry.values()]
        for spec, response in zip(entries, reply.get("Responses", []), strict=False):
            table = str(spec["TableName"])
            by_table[table] = by_table.get(table, 0.0) + 2 * _read_units(item_size(response.get("Item")), True)
    units = Capacity(reads=1, rru=sum(by_table.values()))
    return units, {table: (Capacity(reads=1, rru=rru), 0) for table, rru in by_table.items()}


@contextlib.contextmanager
def metering() -> Iterator[Meter]:
    """Count every labelled AWS request and API Gateway request while the block runs."""
    from chalice.local import LocalGateway
    from moto.core.botocore_stubber import BotocoreStubber

    from local import aws

    meter = Meter()
    original_request = BotocoreStubber.process_request
    original_gateway = LocalGateway.handle_request

    def process_request(self: Any, request: Any) -> Any:
        function = label()
        if function is None:
            return original_request(self, request)
        host = re.match(r"https?://([a-z0-9-]+)\.", request.url).group(1)  # type: ignore[union-attr]
        body = request.body.decode() if isinstance(request.body, bytes) else (request.body or "")
        target = request.headers.get("X-Amz-Target")
        target = target.decode() if isinstance(target, bytes) else target
        operation = target.split(".")[-1] if target else parse_qs(body).get("Action", [""])[0]
        params = json.loads(body) if target and body else {}
        if host != "dynamodb" or operation not in _READS | _WRITES:
            meter.record(function, host, operation, None)
            return original_request(self, request)
        if operation in _READS:
            response = original_request(self, request)
            raw = response[2] if response is not None else ""
            reply = json.loads(raw) if raw else {}
            meter.record(function, host, operation, *_read_capacity(operation, params, reply))
            return response
        with aws._SERIALIZED:  # the same lock moto's writes take: the images are this request's own
            targets = _write_targets(operation, params)
            before = [_current_item(table, key) for table, key, _ in targets]
            response = original_request(self, request)
            after = [_current_item(table, key) for table, key, _ in targets]
        meter.record(function, host, operation, *_write_capacity(targets, before, after))
        return response

    def handle_request(self: Any, method: str, path: str, headers: Any, body: Any) -> Any:
        route = next((name for name, verb, pattern in ROUTES if verb == method and pattern.fullmatch(path)), "other")
        function = label() or API_HANDLER
        with meter._lock:
            meter.api[(function, route)] += 1
        started = time.perf_counter()
        try:
            return original_gateway(self, method, path, headers, body)
        finally:
            meter.invoked(function, time.perf_counter() - started)

    def submit(self: ThreadPoolExecutor, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """A pool's worker does its submitter's work: it stands in for the same function."""
        function = label()
        if function is None:
            return original_submit(self, fn, *args, **kwargs)

        def labelled(*inner: Any, **named: Any) -> Any:
            with acting_as(function):
                return fn(*inner, **named)

        return original_submit(self, labelled, *args, **kwargs)

    original_submit = ThreadPoolExecutor.submit
    BotocoreStubber.process_request = process_request  # type: ignore[method-assign]
    LocalGateway.handle_request = handle_request  # type: ignore[method-assign]
    ThreadPoolExecutor.submit = submit  # type: ignore[method-assign,assignment]
    try:
        yield meter
    finally:
        BotocoreStubber.process_request = original_request  # type: ignore[method-assign]
        LocalGateway.handle_request = original_gateway  # type: ignore[method-assign]
        ThreadPoolExecutor.submit = original_submit  # type: ignore[method-assign]


__all__ = ["API_HANDLER", "Capacity", "Meter", "acting_as", "item_size", "metering"]
