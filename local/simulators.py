"""Carrier, partner and operator simulators over real HTTP (SPEC §4, §7, §9).

They check our signatures, answer from local/fixtures/*.csv, and partners and
operators call back, signed, to the API's callback URL after their configured delay.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from http.client import HTTPException
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from chalicelib import http, signing

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# callback, immediate, flaky, silent: SPEC §7. reject: 400. error: answers {"error"} at once.
# down: 503 to everything. slow: answers only after our HTTP read timeout (chalicelib/http.py).
# partial: 503 to every request for a fixed fifth of the tasks (partial_fails), callback for the rest.
MODES = ("callback", "immediate", "flaky", "silent", "reject", "error", "down", "slow", "late", "partial")
PARTIAL_ONE_IN = 5  # partial mode fails one task in five


def partial_fails(task_id: str) -> bool:
    """Whether a partner in `partial` mode fails this task (lookup, dispute, release id): chosen by a hash of
    the id, not at random, so the same tasks fail on every try (a shard of the partner down for good) while
    it answers the others; tests ask it which of theirs those are."""
    return int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16) % PARTIAL_ONE_IN == 0


@dataclass(frozen=True)
class Subscriber:
    phone: str
    id_last6: str
    status: str
    carrier: str
    name: str = ""  # the real-name record a card query's check matches (SPEC §9)
    id_number: str = ""
    since: str = ""  # the day this holder's subscription began (SPEC §10.2): a match states it


def load_subscribers(path: str | None = None) -> dict[str, Subscriber]:
    with open(path or os.path.join(FIXTURES, "subscribers.csv"), encoding="utf-8") as fh:
        return {row["phone"]: Subscriber(**row) for row in csv.DictReader(fh)}


class Accounts:
    """The companies' binding records (accounts.csv): accounts per (phone, company), each row bound on a day.
    A release unbinds, for good, the rows bound before `since` (SPEC §10.2), so a later lookup counts fewer.
    Shared by every partner simulator of a stack."""

    def __init__(self, rows: list[tuple[str, str, int, str]]) -> None:
        self._rows = rows  # (phone, company, accounts, bound_on YYYY-MM-DD)
        self._lock = threading.Lock()

    @property
    def rows(self) -> list[tuple[str, str, int, str]]:
        with self._lock:
            return list(self._rows)

    def get(self, key: tuple[str, str], default: int = 0) -> int:
        phone, company = key
        with self._lock:
            return sum(n for p, c, n, _ in self._rows if (p, c) == (phone, company)) or default

    def release(self, phone: str, company: str, since: str) -> int:
        """Unbind the accounts bound before `since`; how many."""
        with self._lock:
            before = [row for row in self._rows if row[:2] == (phone, company) and row[3] < since]
            self._rows = [row for row in self._rows if row not in before]
        return sum(n for _, _, n, _ in before)


def load_accounts(path: str | None = None) -> Accounts:
    with open(path or os.path.join(FIXTURES, "accounts.csv"), encoding="utf-8") as fh:
        return Accounts([(row["phone"], row["company"], int(row["account_count"]), row["bound_on"])
                         for row in csv.DictReader(fh)])


DEFAULT_OPERATOR_MODE = ("callback", 1.0)  # an operator not in operators.csv


def load_cards(path: str | None = None) -> dict[tuple[str, str], int]:
    """(id_number, operator) -> active cards: the whole truth per ID; a missing row means 0."""
    with open(path or os.path.join(FIXTURES, "cards.csv"), encoding="utf-8") as fh:
        return {(row["id_number"], row["operator"]): int(row["card_count"]) for row in csv.DictReader(fh)}


def load_modes(kind: str, path: str, override: str | None, variable: str,
               default: tuple[str, float] = ("callback", 1.0)) -> dict[str, tuple[str, float]]:
    """partner id -> (mode, delay_seconds) from a CSV with columns `<kind>,mode,delay_seconds`;
    `override` ("meituan=silent,jd=flaky", the `variable` PARTNER_MODES or OPERATOR_MODES) changes the
    mode and keeps the delay. A partner in neither answers as `default`."""
    with open(path, encoding="utf-8") as fh:
        modes = {row[kind]: (row["mode"], float(row["delay_seconds"])) for row in csv.DictReader(fh)}
    for item in filter(None, (override or "").split(",")):
        partner, _, mode = item.strip().partition("=")
        if mode not in MODES:
            raise ValueError(f"{variable}: unknown mode {mode!r} for {partner!r}")
        modes[partner] = (mode, modes.get(partner, default)[1])
    return modes


def load_operator_modes(path: str | None = None, override: str | None = None) -> dict[str, tuple[str, float]]:
    return load_modes("operator", path or os.path.join(FIXTURES, "operators.csv"), override, "OPERATOR_MODES",
                      DEFAULT_OPERATOR_MODE)


def load_partner_modes(path: str | None = None, override: str | None = None) -> dict[str, tuple[str, float]]:
    return load_modes("company", path or os.path.join(FIXTURES, "partners.csv"), override, "PARTNER_MODES")


def call_back(url: str, secret: str, answer: dict[str, Any], attempts: int = 6) -> int:
    """POST a signed callback as a partner's system does: a connection error, a timeout or a 5xx is tried
    again (freshly signed) with backoff, 0.5 s … 8 s, about 15 s in all: on a loaded machine 132 operators
    calling back at once can outlast a couple of quick tries, and a real partner does not give up on its
    first busy moment. The last HTTP status, or 0 when it never got through."""
    body = json.dumps(answer).encode()
    status = 0
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(8.0, 0.5 * 2 ** (attempt - 1)))  # the partner's own backoff, not a test's
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers=signing.signed_headers(secret, body, time.time()))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            status = exc.code
            if status < 500:
                return status
        except (OSError, HTTPException):  # refused, timed out, reset, or a broken reply
            status = 0
    return status


def answer_per_mode(mode: str, tries: int, failures_per_request: int, answer: dict[str, Any],
                    error_answer: dict[str, Any], call_back: Callable[..., Any], *args: Any,
                    delay: float = 1.0, task_id: str = "") -> tuple[int, Any]:
    """How a partner in `mode` answers a request (SPEC §7 modes, plus reject, error, down, slow, late, partial);
    in callback mode `call_back(*args)` runs after `delay` seconds and the request gets a 202."""
    if mode == "down" or (mode == "partial" and partial_fails(task_id)):
        return 503, {"error": "down"}
    if mode == "slow":  # past the caller's overall time limit, then an answer nobody reads
        time.sleep(http.OVERALL_SECONDS + 1)
        return 200, answer
    if mode == "reject":
        return 400, {"error": "unsupported request"}
    if mode == "silent":
        return 202, None
    if mode == "flaky" and tries <= failures_per_request:
        return 503, {"error": "overloaded"}
    if mode == "immediate":
        return 200, answer
    if mode == "error":  # answers at once that it cannot do it
        return 200, error_answer
    if mode == "late":  # calls back long after the query's execution ended (LATE_SECONDS, default 20)
        delay = float(os.environ.get("LATE_SECONDS", "20"))
    timer = threading.Timer(delay, call_back, args)
    timer.daemon = True
    with _PENDING_LOCK:
        _PENDING.add(timer)
    timer.start()
    return 202, None


# Callbacks not yet made: a stack that stops cancels them, so none reaches the next stack on the same port.
_PENDING: weakref.WeakSet[threading.Timer] = weakref.WeakSet()
_PENDING_LOCK = threading.Lock()


def pending_callbacks() -> int:
    """Callbacks scheduled and neither made nor cancelled yet (a failed test's report shows it)."""
    with _PENDING_LOCK:
        return sum(1 for timer in _PENDING if not timer.finished.is_set())


def cancel_pending_callbacks() -> None:
    with _PENDING_LOCK:
        for timer in list(_PENDING):
            timer.cancel()
        _PENDING.clear()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep the console for SMS lines
        pass

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._answer(*self.server.simulator.handle(self.path, dict(self.headers), body))

    def do_GET(self) -> None:  # noqa: N802
        self._answer(*self.server.simulator.get(self.path))

    def _answer(self, status: int, answer: Any) -> None:
        data = json.dumps(answer, ensure_ascii=False).encode() if answer is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # http.server's listen backlog is 5: a fan-out's concurrent requests would find connections refused,
    # which a partner's load balancer does not do.
    request_queue_size = 256

    def __init__(self, simulator: Simulator, port: int) -> None:
        self.simulator = simulator
        super().__init__(("127.0.0.1", port), _Handler)


class Simulator:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.url = ""
        self._server: _Server | None = None

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        raise NotImplementedError

    def get(self, path: str) -> tuple[int, Any]:
        return 404, {"error": "not found"}

    def start(self, port: int = 0) -> str:
        self._server = _Server(self, port)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@dataclass
class CarrierSimulator(Simulator):
    """One gateway for the three carriers: POST /{carrier}/verifications."""

    secrets: dict[str, str]  # carrier id -> shared secret
    subscribers: dict[str, Subscriber]
    unavailable_for: int = 0  # answer 503 to this many requests first (carrier down, then up)

    def __post_init__(self) -> None:
        Simulator.__init__(self)
        self._lock = threading.Lock()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        carrier = path.strip("/").split("/")[0]
        if not path.endswith("/verifications") or carrier not in self.secrets:
            return 404, {"error": "not found"}
        try:
            signing.verify(self.secrets[carrier], headers, body)
        except Exception:
            return 401, {"error": "bad signature"}
        with self._lock:
            self.requests.append({"carrier": carrier})
            if self.unavailable_for > 0:
                self.unavailable_for -= 1
                return 503, {"error": "maintenance"}
        request = json.loads(body)
        subscriber = self.subscribers.get(request.get("phone", ""))
        if subscriber is None:
            return 200, {"result": "unknown"}
        if subscriber.status == "cancelled":
            return 200, {"result": "cancelled"}
        if "id_number" in request:  # a card query (SPEC §9): phone, name and ID number all match
            matches = (bool(subscriber.id_number) and request.get("name") == subscriber.name
                       and str(request["id_number"]).upper() == subscriber.id_number.upper())
        else:
            matches = subscriber.id_last6.upper() == str(request.get("id_last6", "")).upper()
        if not matches:
            return 200, {"result": "mismatch"}
        return 200, {"result": "match", "since": subscriber.since}


class _Refusal(Exception):
    """A request the simulator answers with an error status before looking at it further."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def read_signed(secret: str, headers: dict[str, str], body: bytes, *fields: str) -> dict[str, str]:
    """The fields of a signed, well-formed JSON request, as strings; _Refusal (401, 400) otherwise."""
    try:
        signing.verify(secret, headers, body)
    except Exception as exc:
        raise _Refusal(401, {"error": "bad signature"}) from exc
    try:
        request = json.loads(body)
        return {name: str(request[name]) for name in fields}
    except (ValueError, TypeError, KeyError) as exc:
        raise _Refusal(400, {"error": "bad request"}) from exc


@dataclass
class PartnerSimulator(Simulator):
    company: str
    secret: str
    accounts: Accounts
    mode: str = "callback"
    delay_seconds: float = 1.0
    failures_per_lookup: int = 2  # flaky mode
    _tries: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Simulator.__init__(self)
        self._lock = threading.Lock()
        self.callbacks: list[int] = []  # HTTP status of each callback we made
        self.disputes: list[dict[str, Any]] = []  # dispute requests received (SPEC §8)
        self.releases: list[dict[str, Any]] = []  # release requests received (SPEC §10.2)
        self._unbound: dict[str, int] = {}  # release id -> accounts it unbound (a retried request: the same)

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        action = {"/lookups": self._lookup, "/disputes": self._dispute, "/releases": self._release}.get(
            path.rstrip("/"))
        if action is None:
            return 404, {"error": "not found"}
        try:
            return action(headers, body)
        except _Refusal as refusal:
            return refusal.status, refusal.body

    def _lookup(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        request = read_signed(self.secret, headers, body, "lookup_id", "phone", "callback_url")
        lookup_id = request["lookup_id"]
        with self._lock:
            self.requests.append({"lookup_id": lookup_id})
            tries = self._tries[lookup_id] = self._tries.get(lookup_id, 0) + 1
        answer = {"lookup_id": lookup_id,
                  "account_count": self.accounts.get((request["phone"], self.company), 0)}
        return answer_per_mode(self.mode, tries, self.failures_per_lookup, answer,
                               {"lookup_id": lookup_id, "error": "lookup backend unavailable"},
                               self._call_back, request["callback_url"], answer, delay=self.delay_seconds,
                               task_id=lookup_id)

    def _dispute(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """SPEC §8: in callback/immediate modes the accounts are unbound (`no_account` when there are none)."""
        request = read_signed(self.secret, headers, body, "dispute_id", "phone", "callback_url")
        dispute_id = request["dispute_id"]
        with self._lock:
            self.disputes.append({"dispute_id": dispute_id})
            tries = self._tries[f"dispute:{dispute_id}"] = self._tries.get(f"dispute:{dispute_id}", 0) + 1
        count = self.accounts.get((request["phone"], self.company), 0)
        answer = {"dispute_id": dispute_id, "outcome": "unbound" if count else "no_account", "accounts": count}
        return answer_per_mode(self.mode, tries, self.failures_per_lookup, answer,
                               {"dispute_id": dispute_id, "outcome": "rejected", "accounts": 0},
                               self._call_back, request["callback_url"], answer, delay=self.delay_seconds,
                               task_id=dispute_id)

    def _release(self, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """SPEC §10.2: in the modes that answer with a count (callback, immediate, flaky once it answers) the
        number's accounts bound before `since` are unbound at once, and the answer says how many; the other
        modes behave as for lookups and unbind nothing."""
        request = read_signed(self.secret, headers, body, "release_id", "phone", "since", "callback_url")
        release_id, phone, since, callback_url = (request[f] for f in ("release_id", "phone", "since", "callback_url"))
        with self._lock:
            self.releases.append({"release_id": release_id, "since": since})
            tries = self._tries[f"release:{release_id}"] = self._tries.get(f"release:{release_id}", 0) + 1
            unbound = self._unbound.setdefault(release_id, 0)
        acts = self.mode in ("callback", "immediate", "late", "slow") or (
            self.mode == "flaky" and tries > self.failures_per_lookup) or (
            self.mode == "partial" and not partial_fails(release_id))
        if acts:
            with self._lock:
                unbound = self._unbound[release_id] = unbound + self.accounts.release(phone, self.company, since)
        answer = {"release_id": release_id, "unbound": unbound}
        return answer_per_mode(self.mode, tries, self.failures_per_lookup, answer,
                               {"release_id": release_id, "error": "release backend unavailable"},
                               self._call_back, callback_url, answer, delay=self.delay_seconds, task_id=release_id)

    def get(self, path: str) -> tuple[int, Any]:
        if path.rstrip("/") != "/stats":
            return 404, {"error": "not found"}
        return 200, {"requests": len(self.requests), "callbacks": len(self.callbacks),
                     "disputes": len(self.disputes), "releases": len(self.releases)}

    def _call_back(self, url: str, answer: dict[str, Any]) -> None:
        self.callbacks.append(call_back(url, self.secret, answer))


@dataclass
class OperatorSimulator(Simulator):
    """Every telecom operator of SPEC §9 behind one server: /{operator}/card-lookups, /{operator}/card-disputes
    (SPEC §10.1), /{operator}/stats.

    `modes` (operator -> (mode, delay_seconds)) is read at each request, so a test or an operator
    of the local stack changes an operator's behaviour at runtime (`set_mode`); an operator not in
    it behaves as `default`. The modes are the partners' (MODES).
    """

    secrets: dict[str, str]  # operator id -> shared secret; any other operator is 404
    cards: dict[tuple[str, str], int]  # (id_number, operator) -> card count, 0 when absent
    modes: dict[str, tuple[str, float]] = field(default_factory=dict)
    default: tuple[str, float] = DEFAULT_OPERATOR_MODE
    failures_per_lookup: int = 2  # flaky mode

    def __post_init__(self) -> None:
        Simulator.__init__(self)
        self._lock = threading.Lock()
        self._tries: dict[tuple[str, str], int] = {}
        self.callbacks: dict[str, list[int]] = {}  # operator -> HTTP status of each callback made
        self.disputes: list[dict[str, Any]] = []  # card dispute requests received (SPEC §10.1)

    def mode_of(self, operator: str) -> tuple[str, float]:
        return self.modes.get(operator, self.default)

    def set_mode(self, operator: str, mode: str, delay_seconds: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.modes[operator] = (mode, self.mode_of(operator)[1] if delay_seconds is None else delay_seconds)

    def requests_to(self, operator: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["operator"] == operator]

    def _operator(self, path: str, action: str) -> str | None:
        parts = path.split("?")[0].strip("/").split("/")
        if len(parts) != 2 or parts[1] != action or parts[0] not in self.secrets:
            return None
        return parts[0]

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        dispute_to = self._operator(path, "card-disputes")
        if dispute_to is not None:
            return self._card_dispute(dispute_to, headers, body)
        operator = self._operator(path, "card-lookups")
        if operator is None:
            return 404, {"error": "not found"}
        try:
            lookup_id, id_number, callback_url = self._signed_request(operator, headers, body, "lookup_id")
        except _Refusal as refusal:
            return refusal.status, refusal.body
        mode, delay = self.mode_of(operator)
        with self._lock:
            self.requests.append({"operator": operator, "lookup_id": lookup_id})
            tries = self._tries[operator, lookup_id] = self._tries.get((operator, lookup_id), 0) + 1
        answer = {"lookup_id": lookup_id, "card_count": self.cards.get((id_number.upper(), operator), 0)}
        return answer_per_mode(mode, tries, self.failures_per_lookup, answer,
                               {"lookup_id": lookup_id, "error": "lookup backend unavailable"},
                               self._call_back, operator, callback_url, answer, delay=delay, task_id=lookup_id)

    def _signed_request(self, operator: str, headers: dict[str, str], body: bytes,
                        id_field: str) -> tuple[str, str, str]:
        """(task id, ID number, callback URL) of a signed, well-formed request to `operator`."""
        request = read_signed(self.secrets[operator], headers, body, id_field, "id_number", "name", "callback_url")
        return request[id_field], request["id_number"], request["callback_url"]

    def _card_dispute(self, operator: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """SPEC §10.1: in callback/immediate modes the cards registered to the ID number there are suspended
        (`no_card` when there are none); the other modes behave as for lookups."""
        try:
            dispute_id, id_number, callback_url = self._signed_request(operator, headers, body, "dispute_id")
        except _Refusal as refusal:
            return refusal.status, refusal.body
        mode, delay = self.mode_of(operator)
        with self._lock:
            self.disputes.append({"operator": operator, "dispute_id": dispute_id})
            key = (operator, f"dispute:{dispute_id}")
            tries = self._tries[key] = self._tries.get(key, 0) + 1
        cards = self.cards.get((id_number.upper(), operator), 0)
        answer = {"dispute_id": dispute_id, "outcome": "suspended" if cards else "no_card", "cards": cards}
        return answer_per_mode(mode, tries, self.failures_per_lookup, answer,
                               {"dispute_id": dispute_id, "outcome": "rejected", "cards": 0},
                               self._call_back, operator, callback_url, answer, delay=delay, task_id=dispute_id)

    def get(self, path: str) -> tuple[int, Any]:
        operator = self._operator(path, "stats")
        if operator is None:
            return 404, {"error": "not found"}
        return 200, {"requests": len(self.requests_to(operator)), "callbacks": len(self.callbacks.get(operator, [])),
                     "disputes": len([d for d in self.disputes if d["operator"] == operator])}

    def _call_back(self, operator: str, url: str, answer: dict[str, Any]) -> None:
        status = call_back(url, self.secrets[operator], answer)
        with self._lock:
            self.callbacks.setdefault(operator, []).append(status)
