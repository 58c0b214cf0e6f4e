"""One reply per query, and the per-partner delivery mechanism (SPEC §4, issue 8):
the last settled lookup claims the reply exactly once (the execution ended long before); a failing
partner is retried by its backlog, its circuit breaker and the per-minute job, never by the query's workflow."""
from __future__ import annotations

import csv
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import pytest
import time_machine

from chalicelib.partners.kinds import ACCOUNTS
from chalicelib.registry import Partner
from local.lambdas import acting_as
from local.recording import recording
from local.stack import ROOT, LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, wait_for
from tests.helpers import (
    COMPANIES,
    FakeTime,
    aws,
    circuit,
    clock_past,
    history,
    lookup_states,
    replies_to,
    submit,
    wait_finished,
)

if TYPE_CHECKING:
    from chalice.test import Client

with open(os.path.join(ROOT, "local", "fixtures", "subscribers.csv"), encoding="utf-8") as _fh:
    ACTIVE = [(row["phone"], row["id_last6"]) for row in csv.DictReader(_fh) if row["status"] == "active"]


def options(**changes: Any) -> StackOptions:
    return StackOptions(**{**BASE_OPTIONS.__dict__, **changes})


def start_query(api: Any, stack: Any, phone: str, id_last6: str) -> str:
    response = submit(api, stack, phone, id_last6)
    assert response.status_code == 202, response.body
    assert stack.pump_once() == 1
    return str(response.json_body["query_id"])


def retry_queue_empty(stack: Any) -> bool:
    counts = aws("sqs").get_queue_attributes(QueueUrl=stack.env["RETRY_QUEUE_URL"], AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed"])["Attributes"]
    return all(int(n) == 0 for n in counts.values())


# -- the one reply claim ------------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [options(partner_modes=",".join(f"{c}=silent" for c in COMPANIES))])
def test_the_last_of_concurrent_callbacks_claims_the_reply_exactly_once(stack: LocalStack, api: Client) -> None:
    """GIVEN every company waits for its callback, WHEN all of them (and duplicates) call back at
    the same moment, THEN the reply is claimed and enqueued once, one SMS is published, and it
    counts every company."""
    phone, id_last6 = ACTIVE[1]
    query_id = start_query(api, stack, phone, id_last6)
    wait_for(lambda: all(p.requests for p in stack.partners.values()), 30, "every partner asked")
    company = {c.id: c for c in _companies()}
    bodies = [(company[c], {"lookup_id": p.requests[0]["lookup_id"], "account_count": i})
              for i, (c, p) in enumerate(stack.partners.items())]
    barrier = threading.Barrier(2 * len(bodies))
    failures: list[BaseException] = []

    def call_back(partner: Partner, body: dict[str, Any]) -> None:
        barrier.wait()
        try:
            with acting_as("APIHandler"):
                stack.app_module.lookups().record_callback(ACCOUNTS, partner, body)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            failures.append(exc)

    with recording() as recorder:
        threads = [threading.Thread(target=call_back, args=item) for item in bodies * 2]  # each twice
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_finished(stack, query_id)
    assert failures == []
    reply_queue = stack.env["REPLY_QUEUE_URL"].rsplit("/", 1)[-1]
    enqueued = {(function, action): n for (function, action, resource), n in recorder.calls.items()
                if resource == reply_queue and action.startswith("sqs:SendMessage")}
    assert enqueued == {("APIHandler", "sqs:SendMessageBatch"): 1}  # one claim, by a callback
    assert sum(n for (_, operation), n in recorder.requests.items() if operation == "sns:Publish") == 1
    (reply,) = replies_to(stack, phone)
    assert "暂未返回" not in reply
    assert f"已返回企业共{sum(range(len(bodies)))}个账号" in reply


def _companies() -> list[Partner]:
    from chalicelib import registry

    return list(registry.companies())


@pytest.mark.parametrize("stack_options", [options(partner_modes=",".join(
    f"{c}={'immediate' if i % 2 else 'callback'}" for i, c in enumerate(COMPANIES)))])
def test_callbacks_racing_the_fan_outs_immediate_answers_claim_the_reply_once(stack: LocalStack, api: Client) -> None:
    """Half the companies answer in the 200, half call back at once, while the fan-out still runs."""
    for partner in stack.partners.values():
        partner.delay_seconds = 0
    queries = [(start_query(api, stack, phone, id_last6), phone) for phone, id_last6 in ACTIVE[:3]]
    for query_id, phone in queries:
        assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
        (reply,) = replies_to(stack, phone)
        assert "暂未返回" not in reply
        assert sum(1 for e in history(stack, query_id) if e["type"].endswith("StateEntered")) == 3


# -- a failing partner ------------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=down")])
def test_a_partner_down_then_recovering_before_the_deadline_is_reported(stack: LocalStack, api: Client) -> None:
    phone, id_last6 = "18912345678", "071234"  # 2 accounts at jd
    query_id = start_query(api, stack, phone, id_last6)
    jd = stack.partners["jd"]
    wait_for(lambda: jd.requests, 20, "jd asked")
    jd.mode = "immediate"  # back up: the retry queue brings the lookup back after its backoff
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    (reply,) = replies_to(stack, phone)
    assert "京东2个" in reply and "暂未返回" not in reply


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=down", deadline_seconds=8,
                                                   first_backoff_seconds=2)])
def test_a_partner_down_for_the_whole_deadline_is_no_answer_and_gets_bounded_requests(stack: LocalStack,
                                                                                      api: Client) -> None:
    phone, id_last6 = "18912345678", "071234"
    started = time.time()
    query_id = start_query(api, stack, phone, id_last6)
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    (reply,) = replies_to(stack, phone)
    assert "京东暂未返回" in reply and "美团1个" in reply
    # The deployed backoff, 2 s, 4 s, 8 s…: in 8 s the lookup is tried at most three times, never in a loop.
    assert 1 <= len(stack.partners["jd"].requests) <= 3
    # After the deadline its backlog is dropped unsent, whatever the job does later.
    asked = len(stack.partners["jd"].requests)
    stack.partners["jd"].mode = "immediate"
    stack.deliver_once(now=started + 3600)
    assert len(stack.partners["jd"].requests) == asked
    assert lookup_states(query_id)["jd"] == "expired"
    assert len(replies_to(stack, phone)) == 1


class RecordingClient:
    """The real partner client, noting the (fake) time of each request it sends."""

    def __init__(self, inner: Any, clock: Any) -> None:
        self.inner, self.clock = inner, clock
        self.sent: list[tuple[str, Any]] = []

    def send(self, kind: Any, partner: Partner, lookup_id: str, fields: dict[str, str]) -> Any:
        self.sent.append((partner.id, self.clock()))
        return self.inner.send(kind, partner, lookup_id, fields)


# Every other partner answers by callback: a flaky one would open its own circuit under this load. The
# deployed backoff (2 s, 4 s…), as the tries per lookup below count it.
@pytest.mark.parametrize("stack_options", [options(partner_modes=",".join(
    f"{c}={'down' if c == 'jd' else 'callback'}" for c in COMPANIES), deadline_seconds=600, first_backoff_seconds=2,
                                                   company_changes={"jd": {"max_requests_per_second": 2}})])
def test_circuit_opens_probes_once_a_minute_closes_and_replays_the_backlog_at_the_partners_pace(stack: LocalStack,
                                                                                                api: Client) -> None:
    """GIVEN jd fails every request, WHEN it has answered nothing for 30 s while at least five lookups
    failed, THEN its circuit is open and new queries send it nothing; the job probes at most once a
    minute; once a probe is answered the circuit closes and the backlog goes out at jd's
    max_requests_per_second, and every query gets its reply."""
    from chalicelib.engine.delivery import Delivery
    from chalicelib.partners.delivery import LookupTasks, partner_groups
    from chalicelib.partners.lookups import LookupDesk

    jd = stack.partners["jd"]
    t0 = time.time()
    first = [(start_query(api, stack, phone, id6), phone) for phone, id6 in ACTIVE[:5]]
    # Not after five failures: only once jd has answered nothing for 30 s. The clock then stands 30 s after the
    # first failure rather than the test waiting them out: the retries due by then (backoff 2, 4, 8, 16 s) fail
    # at once, and the first of them opens it.
    wait_for(lambda: circuit("jd")["failures"] >= 5, 30, "five transient failures")
    assert not circuit("jd")["is_open"]
    with clock_past(t0 + 30):
        wait_for(lambda: circuit("jd")["is_open"], 30, "jd's circuit to open")
        wait_for(lambda: retry_queue_empty(stack), 90, "the retry nudges in flight to be consumed")
        before = len(jd.requests)
        # Retried (the retry that opened it), and no lookup tried more than five times (0, 2, 6, 14 and 30 s).
        assert len(first) < before <= 5 * len(first)

        later = [(start_query(api, stack, phone, id6), phone) for phone, id6 in ACTIVE[5:8]]
        wait_for(lambda: all(lookup_states(q).get("jd") == "unsent" for q, _ in later), 20, "later lookups parked")
        assert len(jd.requests) == before  # open: no per-query traffic

        probe_at = circuit("jd")["next_probe_at"]
        assert probe_at >= int(t0) + 30 + 60  # opened 30 s after the first failure, probe a minute later
        assert stack.deliver_once(now=probe_at - 1)["jd"] == 0
        assert stack.deliver_once(now=probe_at)["jd"] == 1      # one probe: still down
        assert stack.deliver_once(now=probe_at + 59)["jd"] == 0  # at most one a minute
        assert circuit("jd")["is_open"] and len(jd.requests) == before + 1

        jd.mode = "immediate"
        app = stack.app_module
        fake = FakeTime(probe_at + 60)
        client = RecordingClient(app.lookups().client, fake.time)
        desk = LookupDesk(app.hasher(), app.vault(), app.lookups().circuits, client, clock=fake.time)  # type: ignore[arg-type]
        with acting_as("DeliverBacklog"):
            sent = Delivery([LookupTasks(desk)], desk.circuits, partner_groups, clock=fake.time,
                            sleep=fake.sleep).deliver(now=fake.time())
        assert not circuit("jd")["is_open"]
        assert sent["jd"] == len(first) + len(later)  # the probe, then the whole backlog
        # The fake clock moves only when the job waits: requests sent at one instant are one slot.
        slots: dict[float, int] = {}
        for _, at in client.sent:
            slots[at] = slots.get(at, 0) + 1
        starts = sorted(slots)
        assert max(slots.values()) <= 2, slots  # jd's max_requests_per_second
        assert all(later - earlier >= 1 for earlier, later in zip(starts, starts[1:], strict=False)), starts
        for query_id, phone in first + later:
            assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
            (reply,) = replies_to(stack, phone)
            assert "暂未返回" not in reply


@pytest.mark.parametrize("stack_options", [options(partner_modes="jd=callback", deadline_seconds=4)])
def test_an_answer_arriving_after_the_deadline_changes_nothing(stack: LocalStack, api: Client) -> None:
    phone, id_last6 = "18912345678", "071234"
    stack.partners["jd"].delay_seconds = 7  # its callback comes after the deadline
    query_id = start_query(api, stack, phone, id_last6)
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    wait_for(lambda: stack.partners["jd"].callbacks, 20, "jd's late callback")
    assert stack.partners["jd"].callbacks == [200]  # recorded, as SPEC §3 says…
    (reply,) = replies_to(stack, phone)
    assert "京东暂未返回" in reply  # …but the reply went at the deadline, and only once


NINTH = {"id": "pinduoduo", "name": "拼多多", "details": "拼多多App：个人中心→设置→账号与安全",
         "unbind": "在拼多多App内更换手机号或注销账号，或致电客服", "hotline": "021-53395288",
         "base_url": "https://yztc-partner.pinduoduo.example/api", "secret_name": "yztc/partners/pinduoduo",
         "apps": ["拼多多"], "max_requests_per_second": 10}


@pytest.mark.parametrize("stack_options", [options(extra_companies=[NINTH], partner_modes="pinduoduo=immediate")])
def test_a_ninth_company_added_by_registry_data_alone_is_asked_and_reported(stack: LocalStack, api: Client) -> None:
    phone, id_last6 = ACTIVE[0]
    query_id = start_query(api, stack, phone, id_last6)
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    assert len(stack.partners["pinduoduo"].requests) == 1
    (reply,) = replies_to(stack, phone)
    assert "美团0个，拼多多0个。" in reply
    assert sum(1 for e in history(stack, query_id) if e["type"].endswith("StateEntered")) == 3
    assert [c["id"] for c in api.http.get("/v1/companies").json_body["companies"]][-1] == "pinduoduo"


# -- the reply's ending ------------------------------------------------------------------------------
def test_a_reply_sns_refuses_for_good_ends_the_query_failed_without_retries(stack: LocalStack, api: Client) -> None:
    from botocore.exceptions import ClientError

    from chalicelib import clients

    phone, id_last6 = ACTIVE[0]
    response = submit(api, stack, phone, id_last6)
    query_id = response.json_body["query_id"]

    refused: list[int] = []

    def refuse(**_: Any) -> None:
        refused.append(1)
        raise ClientError({"Error": {"Code": "InvalidParameter", "Message": "opted out"}}, "Publish")

    clients.client("sns").meta.events.register("before-call.sns.Publish", refuse)
    assert stack.pump_once() == 1
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    assert len(refused) == 1  # one try: a permanent refusal is not retried
    assert api.http.get(f"/v1/queries/{query_id}").json_body["status"] == "failed"
    assert replies_to(stack, phone) == []


@pytest.mark.usefixtures("bundled_registries")  # not the file a stack test on this worker may have written
def test_the_longest_possible_reply_fits_the_sns_limit_and_breakdowns_go_first() -> None:
    from chalicelib import registry, sms

    maximum = 100_000
    longest = [sms.PartnerAnswer(c.name, maximum, {app: maximum // len(c.apps) for app in c.apps} or None)
               for c in registry.companies()]
    text = sms.result_text("13812345678", longest)
    assert len(text.encode()) <= sms.MAX_MESSAGE_BYTES
    assert "（" in text  # the current registry fits with every breakdown
    crowded = longest * 6
    text = sms.result_text("13812345678", crowded)
    assert "（" not in text and len(text.encode()) <= sms.MAX_MESSAGE_BYTES


def test_the_execution_history_of_a_query_holds_only_ids_counts_and_company_ids(stack: LocalStack, api: Client) -> None:
    """The execution carries the query id, its kind and deadline, the carrier's outcome — nothing else;
    the partners' answers (counts per company id) are kept on the query record, not in the history."""
    phone, id_last6 = ACTIVE[0]
    query_id = start_query(api, stack, phone, id_last6)
    wait_finished(stack, query_id)
    events = history(stack, query_id)
    keys: set[str] = set()

    def collect(value: Any) -> None:
        if isinstance(value, dict):
            keys.update(value)
            for inner in value.values():
                collect(inner)
        elif isinstance(value, list):
            for inner in value:
                collect(inner)

    for event in events:
        for details in (v for k, v in event.items() if k.endswith("EventDetails")):
            for field in ("input", "output"):
                if isinstance(details.get(field), str) and details[field].startswith("{"):
                    collect(json.loads(details[field]))
    assert any(e["type"] == "LambdaFunctionSucceeded" for e in events)  # we did look at a real run
    assert keys <= {"query_id", "kind", "deadline_at", "outcome"}, keys
    ddb = aws("dynamodb")
    record = ddb.get_item(TableName=stack.env["QUERIES_TABLE"], Key={"query_id": {"S": query_id}})["Item"]
    assert set(record["results"]["M"]) == set(COMPANIES)
    assert all(set(count) == {"N"} for count in record["results"]["M"].values())  # a count (-1: no answer)
    assert "released" not in record and "task_token" not in record


@pytest.mark.parametrize("stack_options", [options(partner_modes=",".join(
    f"{c}={'down' if c == 'jd' else 'immediate'}" for c in COMPANIES), deadline_seconds=600)])
def test_a_backlog_headed_by_expired_lookups_still_gets_its_probe(stack: LocalStack, api: Client) -> None:
    """GIVEN jd's circuit is open and its oldest backlog lookups belong to queries past their deadline,
    WHEN the probe is due, THEN the job drops the late ones and probes with the first live lookup."""
    from chalicelib.storage.models import Lookup

    queries = [start_query(api, stack, phone, id6) for phone, id6 in ACTIVE[:6]]
    wait_for(lambda: circuit("jd")["failures"] >= 5, 30, "five transient failures")
    # It opens once jd has answered nothing for 30 s (with at least five failures): the clock stands 31 s
    # later rather than the test waiting them out, and the next nudge's failure opens it; then nudges drain.
    with time_machine.travel(time.time() + 31, tick=True):
        wait_for(lambda: circuit("jd")["is_open"], 30, "jd's circuit to open")
        wait_for(lambda: retry_queue_empty(stack), 90, "the retry nudges in flight to be consumed")
        for query_id in queries[:5]:  # the oldest five: their queries' deadlines have passed
            lookup = next(Lookup.scan((Lookup.query_id == query_id) & (Lookup.company == "jd")))
            lookup.update(actions=[Lookup.deadline_at.set(int(time.time()) - 1), Lookup.due_at.set(0)])
        jd = stack.partners["jd"]
        jd.mode = "immediate"
        before = len(jd.requests)
        assert stack.deliver_once(now=circuit("jd")["next_probe_at"])["jd"] == 1
        assert len(jd.requests) == before + 1
        assert not circuit("jd")["is_open"]
        assert [lookup_states(q)["jd"] for q in queries] == ["expired"] * 5 + ["settled"]
