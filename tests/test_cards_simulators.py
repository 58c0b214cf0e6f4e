"""The local stack's stand-ins for SPEC §9 (local/simulators.py, local/fixtures): the operator
simulator over real HTTP, signed with chalicelib.signing; the carrier's name + ID number check; the fixtures."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chalicelib import errors, signing
from chalicelib.cards.validation import normalise_id_number, normalise_name
from local import simulators
from local.stack import ROOT
from tests.conftest import wait_for

FIXTURES = os.path.join(ROOT, "local", "fixtures")
with open(os.path.join(ROOT, "chalicelib", "data", "operators.json"), encoding="utf-8") as _fh:
    OPERATORS = {entry["id"]: entry for entry in json.load(_fh)["operators"]}
SECRETS = {"cmcc-gd": "s" * 64, "cucc-bj": "t" * 64, "mvno-xiaomi": "u" * 64}
ID = "44010619850212345X"
CARDS = {(ID, "cmcc-gd"): 2, (ID, "cucc-bj"): 1}


class _Receiver:
    """The API's callback route, as far as an operator sees it: records signed callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.path, dict(self.headers), body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver()
    yield server
    server.stop()


@pytest.fixture
def operators() -> Iterator[simulators.OperatorSimulator]:
    sim = simulators.OperatorSimulator(secrets=dict(SECRETS), cards=dict(CARDS),
                                       modes={"cucc-bj": ("immediate", 0.0)}, default=("callback", 0.1))
    sim.start(0)
    yield sim
    sim.stop()


def call(url: str, body: Any, secret: str | None, method: str = "POST") -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = signing.signed_headers(secret, data or b"", time.time()) if secret else {}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def lookup(operators: simulators.OperatorSimulator, operator: str, receiver: _Receiver, lookup_id: str = "L1",
           id_number: str = ID, secret: str | None = None) -> tuple[int, Any]:
    body = {"lookup_id": lookup_id, "id_number": id_number, "name": "张伟",
            "callback_url": f"{receiver.url}/v1/operators/{operator}/results"}
    return call(f"{operators.url}/{operator}/card-lookups", body, secret or SECRETS[operator])


def test_callback_mode_answers_202_then_calls_back_signed_with_the_count(operators: simulators.OperatorSimulator,
                                                                         receiver: _Receiver) -> None:
    assert lookup(operators, "cmcc-gd", receiver) == (202, None)
    wait_for(lambda: receiver.calls, 5, "the callback")
    path, headers, body = receiver.calls[0]
    assert path == "/v1/operators/cmcc-gd/results"
    signing.verify(SECRETS["cmcc-gd"], headers, body)
    assert json.loads(body) == {"lookup_id": "L1", "card_count": 2}
    with pytest.raises(errors.BadSignature):
        signing.verify(SECRETS["cucc-bj"], headers, body)  # each operator signs with its own secret
    # The simulator counts its callback once the receiver's answer is back, a moment after the receiver saw it.
    counted = (200, {"requests": 1, "callbacks": 1, "disputes": 0})
    wait_for(lambda: call(f"{operators.url}/cmcc-gd/stats", None, None, "GET") == counted, 5, "the callback counted")


def test_immediate_mode_answers_in_the_response_and_an_absent_row_is_zero(operators: simulators.OperatorSimulator,
                                                                          receiver: _Receiver) -> None:
    assert lookup(operators, "cucc-bj", receiver) == (200, {"lookup_id": "L1", "card_count": 1})
    assert lookup(operators, "cucc-bj", receiver, "L2", "110105194912310021") == (
        200, {"lookup_id": "L2", "card_count": 0})
    assert lookup(operators, "cucc-bj", receiver, "L3", ID.lower()) == (200, {"lookup_id": "L3", "card_count": 1})
    time.sleep(0.3)
    assert receiver.calls == []
    assert call(f"{operators.url}/cucc-bj/stats", None, None, "GET") == (
        200, {"requests": 3, "callbacks": 0, "disputes": 0})


@pytest.mark.parametrize("mode, first, later", [
    ("flaky", (503, {"error": "overloaded"}), (202, None)),  # then as in callback mode
    ("down", (503, {"error": "down"}), (503, {"error": "down"})),
    ("reject", (400, {"error": "unsupported request"}), (400, {"error": "unsupported request"})),
    ("error", (200, {"lookup_id": "L1", "error": "lookup backend unavailable"}),
     (200, {"lookup_id": "L1", "error": "lookup backend unavailable"})),
    ("silent", (202, None), (202, None)),
])
def test_modes_as_partners_and_changeable_at_runtime(operators: simulators.OperatorSimulator, receiver: _Receiver,
                                                     mode: str, first: tuple[int, Any], later: tuple[int, Any]) -> None:
    operators.modes["mvno-xiaomi"] = ("immediate", 0.0)  # the dict itself, or:
    operators.set_mode("mvno-xiaomi", mode)
    answers = [lookup(operators, "mvno-xiaomi", receiver) for _ in range(3)]
    assert answers[0] == first and answers[2] == later
    time.sleep(0.3)
    if mode == "flaky":
        assert answers[1] == first  # the first two tries fail
        assert [json.loads(body) for _, _, body in receiver.calls] == [{"lookup_id": "L1", "card_count": 0}]
    else:
        assert receiver.calls == []
    assert call(f"{operators.url}/mvno-xiaomi/stats", None, None, "GET")[1]["requests"] == 3
    assert lookup(operators, "cmcc-gd", receiver)[0] == 202  # the others keep their own mode


def test_signatures_paths_and_bodies_are_checked(operators: simulators.OperatorSimulator, receiver: _Receiver) -> None:
    assert lookup(operators, "cmcc-gd", receiver, secret=SECRETS["cucc-bj"])[0] == 401
    status, _ = call(f"{operators.url}/cmcc-gd/card-lookups", {"lookup_id": "L1"}, None)
    assert status == 401
    assert call(f"{operators.url}/cmcc-gd/card-lookups", {"lookup_id": "L1"}, SECRETS["cmcc-gd"])[0] == 400
    assert call(f"{operators.url}/cmcc-gd/card-lookups", ["x"], SECRETS["cmcc-gd"])[0] == 400
    assert lookup(operators, "ctcc-sh", receiver, secret="v" * 64)[0] == 404  # not an operator it serves
    assert call(f"{operators.url}/cmcc-gd/lookups", {}, SECRETS["cmcc-gd"])[0] == 404
    assert call(f"{operators.url}/ctcc-sh/stats", None, None, "GET")[0] == 404
    assert call(f"{operators.url}/stats", None, None, "GET")[0] == 404
    assert operators.requests == []  # nothing that failed the checks counts as a request


def card_dispute(operators: simulators.OperatorSimulator, operator: str, receiver: _Receiver, dispute_id: str = "D1",
                 id_number: str = ID, secret: str | None = None) -> tuple[int, Any]:
    body = {"dispute_id": dispute_id, "name": "张伟", "id_number": id_number,
            "callback_url": f"{receiver.url}/v1/operators/{operator}/disputes"}
    return call(f"{operators.url}/{operator}/card-disputes", body, secret or SECRETS[operator])


def test_a_card_dispute_suspends_the_ids_cards_there_by_callback_or_at_once_and_no_card_when_none(
        operators: simulators.OperatorSimulator, receiver: _Receiver) -> None:
    """SPEC §10.1 local stack: callback/immediate modes answer `suspended` with the fixture's card_count."""
    assert card_dispute(operators, "cmcc-gd", receiver) == (202, None)
    wait_for(lambda: receiver.calls, 5, "the dispute callback")
    path, headers, body = receiver.calls[0]
    assert path == "/v1/operators/cmcc-gd/disputes"
    signing.verify(SECRETS["cmcc-gd"], headers, body)
    assert json.loads(body) == {"dispute_id": "D1", "outcome": "suspended", "cards": 2}
    assert card_dispute(operators, "cucc-bj", receiver, "D2", ID.lower()) == (
        200, {"dispute_id": "D2", "outcome": "suspended", "cards": 1})
    assert card_dispute(operators, "cucc-bj", receiver, "D3", "110105194912310021") == (
        200, {"dispute_id": "D3", "outcome": "no_card", "cards": 0})
    assert [d["dispute_id"] for d in operators.disputes] == ["D1", "D2", "D3"]
    assert call(f"{operators.url}/cucc-bj/stats", None, None, "GET") == (
        200, {"requests": 0, "callbacks": 0, "disputes": 2})


@pytest.mark.parametrize("mode, answer", [
    ("reject", (400, {"error": "unsupported request"})),
    ("error", (200, {"dispute_id": "D1", "outcome": "rejected", "cards": 0})),
    ("down", (503, {"error": "down"})),
    ("flaky", (503, {"error": "overloaded"})),
    ("silent", (202, None)),
])
def test_a_card_dispute_follows_the_operators_mode(operators: simulators.OperatorSimulator, receiver: _Receiver,
                                                   mode: str, answer: tuple[int, Any]) -> None:
    operators.set_mode("mvno-xiaomi", mode)
    assert card_dispute(operators, "mvno-xiaomi", receiver) == answer


def test_card_dispute_signatures_and_bodies_are_checked(operators: simulators.OperatorSimulator,
                                                        receiver: _Receiver) -> None:
    assert card_dispute(operators, "cmcc-gd", receiver, secret=SECRETS["cucc-bj"])[0] == 401
    assert call(f"{operators.url}/cmcc-gd/card-disputes", {"dispute_id": "D1"}, SECRETS["cmcc-gd"])[0] == 400
    assert card_dispute(operators, "ctcc-sh", receiver, secret="v" * 64)[0] == 404
    assert operators.disputes == []


def test_slow_mode_answers_after_our_overall_time_limit(operators: simulators.OperatorSimulator, receiver: _Receiver,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from chalicelib import http

    monkeypatch.setattr(http, "OVERALL_SECONDS", 0.2)
    operators.set_mode("cmcc-gd", "slow")
    started = time.monotonic()
    assert lookup(operators, "cmcc-gd", receiver) == (200, {"lookup_id": "L1", "card_count": 2})
    assert time.monotonic() - started >= 1.2


def test_operator_modes_file_and_override() -> None:
    modes = simulators.load_operator_modes(override="cmcc-gd=down, ctcc-xj=silent")
    assert modes["cmcc-gd"] == ("down", 1.0)  # the file's delay is kept
    assert modes["ctcc-xj"] == ("silent", simulators.DEFAULT_OPERATOR_MODE[1])
    assert modes["cucc-bj"] == ("immediate", 0.0)
    with pytest.raises(ValueError, match="OPERATOR_MODES"):
        simulators.load_operator_modes(override="cmcc-gd=asleep")
    with pytest.raises(ValueError):
        simulators.OperatorSimulator(secrets={}, cards={}).set_mode("cmcc-gd", "asleep")


def test_the_carrier_confirms_phone_name_and_id_number_together() -> None:
    subscribers = simulators.load_subscribers()
    carrier = simulators.CarrierSimulator(secrets={"cmcc": SECRETS["cmcc-gd"], "cucc": SECRETS["cucc-bj"]},
                                          subscribers=subscribers)
    url = carrier.start(0)
    try:
        def verify(body: dict[str, str], carrier_id: str = "cmcc") -> str:
            secret = SECRETS["cmcc-gd"] if carrier_id == "cmcc" else SECRETS["cucc-bj"]
            status, answer = call(f"{url}/{carrier_id}/verifications", body, secret)
            assert status == 200
            return str(answer["result"])

        assert verify({"phone": "13812345678", "name": "张伟", "id_number": ID}) == "match"
        assert verify({"phone": "13812345678", "name": "张伟", "id_number": ID.lower()}) == "match"
        assert verify({"phone": "13012340000", "name": "张伟", "id_number": ID}, "cucc") == "match"  # 2nd phone
        assert verify({"phone": "13812345678", "name": "李娜", "id_number": ID}) == "mismatch"
        assert verify({"phone": "13812345678", "name": "张伟", "id_number": "310104199005010203"}) == "mismatch"
        assert verify({"phone": "13900001111", "name": "张伟", "id_number": ID}) == "mismatch"
        assert verify({"phone": "13812345678", "name": "张伟"}) == "mismatch"  # the old form, no id_last6
        assert verify({"phone": "13512340000", "name": "赵磊",
                       "id_number": subscribers["13512340000"].id_number}) == "cancelled"
        assert verify({"phone": "13800000000", "name": "张伟", "id_number": ID}) == "unknown"
        # the internet-account form is unchanged
        assert verify({"phone": "13812345678", "id_last6": "12345x"}) == "match"
        assert verify({"phone": "13812345678", "id_last6": "123456"}) == "mismatch"
    finally:
        carrier.stop()


def _rows(name: str) -> list[dict[str, str]]:
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_subscribers_have_valid_names_and_id_numbers_ending_in_their_id_last6() -> None:
    rows = _rows("subscribers.csv")
    assert list(rows[0]) == ["phone", "id_last6", "status", "carrier", "name", "id_number", "since"]
    assert len(rows) >= 20
    today = dt.date.today()
    for row in rows:
        assert normalise_name(row["name"]) == row["name"]
        assert normalise_id_number(row["id_number"], today) == row["id_number"]
        assert row["id_number"][-6:] == row["id_last6"]
    phones_per_id = Counter(row["id_number"] for row in rows)
    assert max(phones_per_id.values()) >= 2  # one person, two phones
    assert any("·" in row["name"] for row in rows)


def test_cards_are_the_whole_truth_per_id_including_each_active_subscribers_own_card() -> None:
    cards = _rows("cards.csv")
    assert list(cards[0]) == ["id_number", "operator", "card_count"]
    assert all(row["operator"] in OPERATORS and int(row["card_count"]) >= 1 for row in cards)
    assert len({(row["id_number"], row["operator"]) for row in cards}) == len(cards)
    held: dict[str, dict[str, int]] = defaultdict(dict)
    for row in cards:
        held[row["id_number"]][row["operator"]] = int(row["card_count"])
    phones: dict[tuple[str, str], int] = Counter()
    for row in _rows("subscribers.csv"):
        if row["status"] == "active":
            phones[row["id_number"], row["carrier"]] += 1
    for (id_number, carrier), count in phones.items():
        at_carrier = sum(n for op, n in held[id_number].items() if op.startswith(carrier + "-"))
        assert at_carrier >= count, (id_number, carrier)  # the subscriber's own card(s) are there
    several = [ops for ops in held.values() if len(ops) >= 3 and any(op.startswith("mvno-") for op in ops)]
    assert len(several) >= 2
    assert held[ID] == {"cmcc-gd": 2, "cucc-bj": 1}  # SPEC §9's example


def test_operator_modes_fixture_names_registry_operators_and_known_modes() -> None:
    rows = _rows("operators.csv")
    assert list(rows[0]) == ["operator", "mode", "delay_seconds"]
    assert all(row["operator"] in OPERATORS and row["mode"] in simulators.MODES for row in rows)
    assert all(float(row["delay_seconds"]) >= 0 for row in rows)
