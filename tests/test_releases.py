"""Recycled number release (SPEC §10.2, 二次号码解绑): one request asks every company to unbind the accounts bound to
the number before the current holder's subscription began; one result SMS; its status, never its counts.

A release is the query engine's third kind: the same state machine (VerifyCarrier, then AskCompanies) run by moto's
interpreter, the carrier and the eight companies as the HTTP simulators (local/simulators.py), which unbind for real:
a later query counts only the accounts bound since.
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from chalicelib import signing
from local.stack import LocalStack, StackOptions
from tests.conftest import BASE_OPTIONS, post_json, wait_for
from tests.helpers import (
    COMPANIES,
    aws,
    clock_past,
    deadline_of,
    error_code,
    execution_arn,
    history,
    latest_code,
    replies_to,
    request_code,
    submit,
    wait_closed,
    wait_finished,
)
from tests.privacy import assert_clean

if TYPE_CHECKING:
    from chalice.test import Client, HTTPResponse

# local/fixtures: recycled since 2024-03-01; bound before it 腾讯2, 阿里巴巴1, 美团2; since it 腾讯1, 支付宝1.
PHONE, ID6, SINCE = "13900001111", "010203", "2024-03-01"
MASKED = "139****1111"
BEFORE = {"tencent": 2, "alibaba": 1, "meituan": 2}
AFTER = {"tencent": 1, "alipay": 1}
ROUTE = "/v1/number-releases"
THIRTY_DAYS = 30 * 86400


def options(modes: dict[str, str] | None = None, **changes: Any) -> StackOptions:
    """Every company answers releases and lookups in its 200 unless told otherwise: a release completes in seconds."""
    chosen = {c: "immediate" for c in COMPANIES} | (modes or {})
    return StackOptions(**{**BASE_OPTIONS.__dict__, "partner_modes": ",".join(f"{c}={m}" for c, m in chosen.items()),
                           **changes})


IMMEDIATE = options()
TENCENT_AND_JD_SILENT = options({"tencent": "silent", "jd": "silent"})


@pytest.fixture
def stack_options() -> StackOptions:
    """Unless a test parametrizes its own."""
    return IMMEDIATE


pytestmark = pytest.mark.usefixtures("codes_without_resend_gap")  # tests/conftest.py


# -- helpers ---------------------------------------------------------------------------------------
def registry_names() -> list[tuple[str, str]]:
    """(id, name) of every company, in registry order, as the running stack's registry has them."""
    from chalicelib import registry

    return [(company.id, company.name) for company in registry.companies()]


def release_text(masked: str, counts: Mapping[str, int | None]) -> str:
    """SPEC §10.2's result SMS: every company in registry order (absent from `counts`: 0; None: 暂未返回)."""
    parts = []
    for company, name in registry_names():
        count = counts.get(company, 0)
        parts.append(f"{name}暂未返回" if count is None else f"{name}{count}个")
    total = sum(n or 0 for n in counts.values())
    return (f"【一证通查】您的手机号{masked}二次号码解绑结果：{'，'.join(parts)}。"
            f"共解绑{total}个在您使用本号码前绑定的账号。")


def query_text(masked: str, counts: dict[str, int]) -> str:
    parts = [f"{name}{counts.get(company, 0)}个" for company, name in registry_names()]
    return (f"【一证通查】您的手机号{masked}关联的互联网账号：{'，'.join(parts)}。"
            f"已返回企业共{sum(counts.values())}个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")


def mismatch_text(masked: str) -> str:
    return f"【一证通查】您的手机号{masked}查询未成功：手机号码与身份证号码后六位不匹配，请核对后于24小时后重新查询。"


def unavailable_text(masked: str) -> str:
    return f"【一证通查】您的手机号{masked}查询未成功：暂时无法完成查询，请于24小时后重新查询。"


def release(api: Client, stack: LocalStack, phone: str = PHONE, id_last6: str = ID6,
            code: str | None = None) -> HTTPResponse:
    if code is None:
        assert request_code(api, phone).status_code == 202
        code = latest_code(stack, phone)
    return post_json(api, ROUTE, {"phone": phone, "id_last6": id_last6, "code": code})


def accepted(response: HTTPResponse) -> str:
    assert response.status_code == 202, response.body
    release_id = str(response.json_body["release_id"])
    assert response.json_body == {"release_id": release_id, "status": "accepted", "respond_within_days": 15,
                                  "sms_sender": "10699000"}
    assert uuid.UUID(release_id).version == 4
    return release_id


def run_release(api: Client, stack: LocalStack, phone: str = PHONE, id_last6: str = ID6) -> str:
    """Accepted, started, its execution ended and its one SMS committed."""
    release_id = accepted(release(api, stack, phone, id_last6))
    assert stack.pump_once() == 1
    assert wait_finished(stack, release_id)["status"] == "SUCCEEDED"
    return release_id


def status(api: Client, release_id: str) -> dict[str, Any]:
    response = api.http.get(f"{ROUTE}/{release_id}")
    assert response.status_code == 200, response.body
    body: dict[str, Any] = response.json_body
    assert set(body) == {"release_id", "status", "created_at"}, body  # never counts
    return body


def limited(response: HTTPResponse) -> int:
    """A 429 release_limit: its Retry-After (seconds)."""
    assert response.status_code == 429, response.body
    assert error_code(response) == "release_limit"
    assert response.json_body["error"]["message"]
    return int(response.headers["Retry-After"])


def execution_ended(stack: LocalStack, release_id: str, timeout: float = 20) -> dict[str, Any]:
    """The execution ended (AskCompanies asked everyone and recorded their 202s); partners may still owe answers."""
    sfn = aws("stepfunctions")

    def ended() -> dict[str, Any] | None:
        try:
            described = sfn.describe_execution(executionArn=execution_arn(stack, release_id))
        except sfn.exceptions.ExecutionDoesNotExist:
            return None
        return described if described["status"] != "RUNNING" else None

    return wait_for(ended, timeout, f"release {release_id}'s execution to end")  # type: ignore[no-any-return]


def call_back(api: Client, stack: LocalStack, company: str, body: Any, *, key: str | None = None,
              timestamp: float | None = None, headers: dict[str, str] | None = None,
              route: str = "releases") -> HTTPResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    signed = signing.signed_headers(key or stack.secrets[f"yztc/partners/{company}"], raw, timestamp)
    return api.http.post(f"/v1/partners/{company}/{route}", headers={**signed, **(headers or {})}, body=raw)


def no_company_asked(stack: LocalStack) -> bool:
    return all(p.releases == [] and p.requests == [] for p in stack.partners.values())


def china_tomorrow() -> str:
    from chalicelib.throttle import china_today

    return (china_today() + dt.timedelta(days=1)).isoformat()


# -- the whole loop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [options({"tencent": "callback"})])
def test_a_release_unbinds_the_earlier_accounts_and_a_later_query_counts_only_the_holders(
        stack: LocalStack, api: Client) -> None:
    """GIVEN 13900001111, recycled since 2024-03-01 (bound before: 腾讯2, 阿里巴巴1, 美团2; since: 腾讯1, 支付宝1),
    WHEN its holder asks for a release (tencent answers by callback three seconds later, the others in their 200),
    THEN the API answers the exact 202; the status goes accepted → forwarded → completed, never with counts; each
    company got one signed /releases request with `since`; one SMS lists every company in registry order;
    AND a query right after is accepted (the release did not use the 24 h query limit) and counts only the
    accounts bound since: 腾讯1个, 支付宝1个."""
    tencent = stack.partners["tencent"]
    tencent.delay_seconds = 3.0
    wire: list[tuple[str, dict[str, str], bytes]] = []  # what reached tencent, as sent
    answer = tencent.handle

    def tapped(path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        wire.append((path, headers, body))
        return answer(path, headers, body)  # type: ignore[no-any-return]

    tencent.handle = tapped
    release_id = accepted(release(api, stack))
    shown = status(api, release_id)
    assert shown["status"] == "accepted"  # not started yet (the tests pump the start queue)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", shown["created_at"])
    assert stack.pump_once() == 1
    wait_for(lambda: status(api, release_id)["status"] == "forwarded", 10, "the release forwarded")
    assert replies_to(stack, PHONE) == []  # tencent has not answered: no SMS yet
    assert wait_finished(stack, release_id)["status"] == "SUCCEEDED"
    assert status(api, release_id) == {**shown, "status": "completed"}
    assert replies_to(stack, PHONE) == [release_text(MASKED, BEFORE)]
    assert replies_to(stack, PHONE) == [
        "【一证通查】您的手机号139****1111二次号码解绑结果：腾讯2个，阿里巴巴1个，支付宝0个，百度0个，快手0个，抖音0个，"
        "京东0个，美团2个。共解绑5个在您使用本号码前绑定的账号。"]
    for company in COMPANIES:  # the simulators record a request only once its signature verified
        assert stack.partners[company].releases == [{"release_id": release_id, "since": SINCE}], company
        assert stack.partners[company].requests == []  # a release is not a lookup
    assert stack.partners["tencent"].callbacks == [200]
    # Data minimisation (SPEC §10.2): the release id, the phone, `since` and where to answer; signed (SPEC §4).
    ((path, headers, body),) = wire
    assert path == "/releases"
    assert json.loads(body) == {"release_id": release_id, "phone": PHONE, "since": SINCE,
                                "callback_url": f"{stack.env['PUBLIC_API_URL']}/v1/partners/tencent/releases"}
    signing.verify(stack.secrets["yztc/partners/tencent"], headers, body)
    # It is a release, not a query: the query route does not know it.
    assert api.http.get(f"/v1/queries/{release_id}").status_code == 404

    query = submit(api, stack, PHONE, ID6)
    assert query.status_code == 202, query.body  # the release did not take the 24 h query limit
    query_id = query.json_body["query_id"]
    assert stack.pump_once() == 1
    assert wait_finished(stack, query_id)["status"] == "SUCCEEDED"
    assert replies_to(stack, PHONE) == [release_text(MASKED, BEFORE), query_text(MASKED, AFTER)]
    assert replies_to(stack, PHONE)[-1] == (
        "【一证通查】您的手机号139****1111关联的互联网账号：腾讯1个，阿里巴巴0个，支付宝1个，百度0个，快手0个，抖音0个，"
        "京东0个，美团0个。已返回企业共2个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")
    # Neither id is the other kind's: a query's status is not a release's, nor its callbacks.
    assert api.http.get(f"{ROUTE}/{query_id}").status_code == 404
    late = call_back(api, stack, "tencent", {"release_id": query_id, "unbound": 1})
    assert late.status_code == 404 and error_code(late) == "not_found"
    assert call_back(api, stack, "tencent", {"lookup_id": release_id, "account_count": 1},
                     route="results").status_code == 404
    # A late duplicate of tencent's answer, after the release completed: acknowledged, changes nothing.
    again = call_back(api, stack, "tencent", {"release_id": release_id, "unbound": 2})
    assert again.status_code == 200 and again.json_body == {"status": "recorded"}
    assert len(replies_to(stack, PHONE)) == 2


# Fixed ids: each xdist worker must collect the same test names.
@pytest.mark.routes_only
@pytest.mark.parametrize("path", [f"{ROUTE}/00000000-0000-4000-8000-000000000000", f"{ROUTE}/nope",
                                  f"{ROUTE}/" + "a" * 200])
def test_unknown_release_is_404(stack: LocalStack, api: Client, path: str) -> None:
    response = api.http.get(path)
    assert response.status_code == 404
    assert error_code(response) == "not_found"


# -- the answers of the table ------------------------------------------------------------------------
GOOD = {"phone": PHONE, "id_last6": ID6, "code": "123456"}


@pytest.mark.routes_only
@pytest.mark.parametrize(("body", "expected"), [
    ("not json", "invalid_request"),
    ("[]", "invalid_request"),
    ("null", "invalid_request"),
    ({"id_last6": ID6, "code": "123456"}, "invalid_request"),
    ({"phone": PHONE, "code": "123456"}, "invalid_request"),
    ({"phone": PHONE, "id_last6": ID6}, "invalid_request"),
    ({**GOOD, "phone": "1390000111"}, "invalid_phone"),
    ({**GOOD, "phone": "12900001111"}, "invalid_phone"),
    ({**GOOD, "phone": 13900001111}, "invalid_phone"),
    ({**GOOD, "id_last6": "01020"}, "invalid_id_last6"),
    ({**GOOD, "id_last6": "01020Y"}, "invalid_id_last6"),
    ({**GOOD, "id_last6": "320203"}, "invalid_id_last6"),  # day 32
    ({**GOOD, "id_last6": "000203"}, "invalid_id_last6"),  # day 00
    ({**GOOD, "code": "12345"}, "invalid_code_format"),
    ({**GOOD, "code": "12a456"}, "invalid_code_format"),
    ({**GOOD, "code": 123456}, "invalid_code_format"),
], ids=lambda v: v if isinstance(v, str) else json.dumps(v)[-30:])
def test_invalid_release_requests_are_400_and_change_nothing(stack: LocalStack, api: Client, body: Any,
                                                             expected: str) -> None:
    response = post_json(api, ROUTE, body)
    assert response.status_code == 400, response.body
    assert error_code(response) == expected
    assert response.json_body["error"]["message"]
    assert aws("dynamodb").scan(TableName=stack.env["QUERIES_TABLE"])["Items"] == []
    assert stack.read_outbox() == []


@pytest.mark.parametrize("stack_options", [TENCENT_AND_JD_SILENT])
def test_wrong_code_is_403_and_one_release_per_number_runs_or_counts_for_30_days(stack: LocalStack,
                                                                                 api: Client) -> None:
    """GIVEN a wrong code → 403 wrong_code; a used one (the query's, or the accepted release's) → 403 too.
    WHEN a second release comes while the first waits for the carrier, while it is forwarded, and after it completed,
    THEN each is 429 release_limit with a Retry-After: 30 days from the carrier's match once it matched."""
    assert request_code(api, PHONE).status_code == 202
    code = latest_code(stack, PHONE)
    wrong = release(api, stack, code=f"{(int(code) + 1) % 1_000_000:06d}")
    assert wrong.status_code == 403 and error_code(wrong) == "wrong_code"
    assert submit(api, stack, PHONE, ID6, code).status_code == 202  # the code goes to a query…
    used = release(api, stack, code=code)
    assert used.status_code == 403 and error_code(used) == "wrong_code"  # …and is spent
    assert request_code(api, PHONE).status_code == 202
    code = latest_code(stack, PHONE)
    release_id = accepted(release(api, stack, code=code))  # the query's 24 h limit does not hold a release back
    again = release(api, stack, code=code)
    assert again.status_code == 403 and error_code(again) == "wrong_code"

    # Accepted, the carrier not asked yet: running.
    assert 0 < limited(release(api, stack)) <= THIRTY_DAYS
    # The carrier matched (the query waiting in the start queue goes first): forwarded, 30 days from the match.
    assert stack.pump_once() == 2
    execution_ended(stack, release_id)
    assert status(api, release_id)["status"] == "forwarded"
    assert THIRTY_DAYS - 120 <= limited(release(api, stack)) <= THIRTY_DAYS
    for company in ("tencent", "jd"):
        assert call_back(api, stack, company, {"release_id": release_id, "unbound": 0}).status_code == 200
    wait_closed(stack, release_id)
    assert status(api, release_id)["status"] == "completed"
    assert THIRTY_DAYS - 120 <= limited(release(api, stack)) <= THIRTY_DAYS
    assert [m for m in replies_to(stack, PHONE) if "二次号码解绑" in m] == [
        release_text(MASKED, {"alibaba": 1, "meituan": 2})]


def test_a_mismatch_gets_the_mismatch_sms_and_does_not_use_the_release(stack: LocalStack, api: Client) -> None:
    """GIVEN ID digits that are not the holder's, WHEN a release is asked, THEN the same 202, the §5 mismatch SMS,
    status failed, no company asked; AND a correct release right after is accepted and completes."""
    failed = run_release(api, stack, id_last6="010204")
    assert replies_to(stack, PHONE) == [mismatch_text(MASKED)]
    assert status(api, failed)["status"] == "failed"
    assert no_company_asked(stack)
    release_id = run_release(api, stack)
    assert replies_to(stack, PHONE) == [mismatch_text(MASKED), release_text(MASKED, BEFORE)]
    assert status(api, release_id)["status"] == "completed"


def test_a_cancelled_number_gets_no_sms(stack: LocalStack, api: Client) -> None:
    release_id = run_release(api, stack, "13512340000", "201015")
    assert replies_to(stack, "13512340000") == []
    assert status(api, release_id)["status"] == "failed"
    assert no_company_asked(stack)


# -- the carrier's `since` ---------------------------------------------------------------------------
@pytest.mark.parametrize("since", ["2999-01-01", "tomorrow", "not-a-date", "", "2024-02-30", "2024-3-1",
                                   "2024-03-01T00:00:00"])
def test_a_match_without_a_valid_since_is_unknown_and_does_not_use_the_release(stack: LocalStack, api: Client,
                                                                               since: str) -> None:
    """GIVEN the carrier says `match` with a `since` that is no date or in the future (Beijing's tomorrow included),
    WHEN a release is asked, THEN it ends as `unknown`: the §5 unavailable SMS, no company asked, status failed;
    AND the number's release is not used: the next one is accepted."""
    import dataclasses

    subscriber = stack.carrier.subscribers[PHONE]
    stack.carrier.subscribers[PHONE] = dataclasses.replace(
        subscriber, since=china_tomorrow() if since == "tomorrow" else since)
    release_id = run_release(api, stack)
    assert replies_to(stack, PHONE) == [unavailable_text(MASKED)]
    assert status(api, release_id)["status"] == "failed"
    assert no_company_asked(stack)
    stack.carrier.subscribers[PHONE] = subscriber
    accepted(release(api, stack))


def test_a_number_the_carrier_does_not_know_gets_the_unavailable_sms(stack: LocalStack, api: Client) -> None:
    release_id = run_release(api, stack, "13712349876", "010101")
    assert replies_to(stack, "13712349876") == [unavailable_text("137****9876")]
    assert status(api, release_id)["status"] == "failed"
    assert no_company_asked(stack)
    accepted(release(api, stack, "13712349876", "010101"))


# A deadline far off, so a loaded machine's first checks all come before it; once the carrier has refused twice,
# the clock passes it (the check's retries still sleep real seconds: VerifyCarrier retries on after the deadline).
@pytest.mark.parametrize("stack_options", [options(release_deadline_seconds=600)])
def test_a_carrier_down_until_the_deadline_gets_the_unavailable_sms_and_does_not_use_the_release(
        stack: LocalStack, api: Client) -> None:
    """GIVEN the carrier down past the release's deadline, THEN at the deadline the §5 unavailable SMS and the
    release is not used (the next one is accepted); AND when the carrier comes back, the first release's retried
    check finds it answered already: no company is asked, no second SMS."""
    stack.carrier.unavailable_for = 10_000
    release_id = accepted(release(api, stack))
    assert stack.pump_once() == 1
    wait_for(lambda: len(stack.carrier.requests) >= 2, 30, "the carrier refusing a check and its retry")
    # Not before the deadline: no SMS, still verifying.
    assert replies_to(stack, PHONE) == [] and status(api, release_id)["status"] == "verifying"
    with clock_past(deadline_of(stack, release_id)):
        record = wait_closed(stack, release_id, timeout=30)
        assert int(record["updated_at"]) >= int(record["deadline_at"])
        assert replies_to(stack, PHONE) == [unavailable_text(MASKED)]
        assert status(api, release_id)["status"] == "failed"
        assert "id_sealed" not in record
        accepted(release(api, stack))  # not used: the next release is accepted (and waits in the start queue)
        stack.carrier.unavailable_for = 0
        assert execution_ended(stack, release_id, timeout=40)["status"] == "SUCCEEDED"
    assert no_company_asked(stack)
    assert replies_to(stack, PHONE) == [unavailable_text(MASKED)]


def test_a_dead_lettered_release_reply_ends_failed_and_does_not_use_the_release(stack: LocalStack,
                                                                                 api: Client) -> None:
    """GIVEN a release the carrier never answered, WHEN its reply fails every try (the reply queue's dead letter
    handler marks it failed), THEN the number's release is given back: the next release is accepted."""
    stack.carrier.unavailable_for = 10_000  # it is never dated
    release_id = accepted(release(api, stack))
    stack.app_module.reply_sender().fail(release_id)
    assert status(api, release_id)["status"] == "failed"
    accepted(release(api, stack))


@pytest.mark.parametrize("stack_options", [options(release_deadline_seconds=15 * 86400)])
def test_a_release_record_outlives_its_fifteen_day_deadline(stack: LocalStack, api: Client) -> None:
    """The record is what its deadline replies from: DynamoDB's TTL must not delete it before (QUERY_RECORD_DAYS,
    7 days, is shorter than a release's 15)."""
    from chalicelib.storage.models import QueryRecord

    record = QueryRecord.get(accepted(release(api, stack)), consistent_read=True)
    assert record.ttl.timestamp() > int(record.deadline_at) >= time.time() + 15 * 86400 - 60


# -- concurrency -------------------------------------------------------------------------------------
def plant_codes(stack: LocalStack, phone: str, count: int) -> list[str]:
    """`count` live codes for the number, stored as the code service stores them (keyed hashes). SPEC §3 keeps at
    most 3 live through the API; the point here is many valid submissions racing for one release lock."""
    from chalicelib.storage.models import VerificationCode, at

    hasher = stack.app_module.hasher()
    key = hasher.digest("phone", phone)
    codes = [f"{n:06d}" for n in range(271828, 271828 + 7919 * count, 7919)]
    now = int(time.time())
    VerificationCode(key, codes={hasher.digest("code", key, code): now + 300 for code in codes},
                     issue_id="planted", wrong=0, version=1, ttl=at(now + 600)).save()
    return codes


def test_twenty_concurrent_releases_each_with_its_own_valid_code_accept_exactly_one(stack: LocalStack,
                                                                                    api: Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers import post_from

    codes = plant_codes(stack, PHONE, 20)

    def post(n: int) -> tuple[int, Any, str | None]:
        # 20 source addresses: one client has at most 5 submissions in flight (SPEC §3 wrong tries, taken first)
        status, headers, body = post_from(stack, f"127.0.0.{n + 2}", ROUTE,
                                          {"phone": PHONE, "id_last6": ID6, "code": codes[n]})
        return status, body, headers.get("Retry-After")

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(post, range(20)))
    statuses = [s for s, _, _ in answers]
    assert statuses.count(202) == 1, answers
    refused = [(body, retry_after) for s, body, retry_after in answers if s != 202]
    assert all(s == 429 for s in statuses if s != 202), answers
    assert all(body["error"]["code"] == "release_limit" and retry_after and int(retry_after) > 0
               for body, retry_after in refused), refused
    records = aws("dynamodb").scan(TableName=stack.env["QUERIES_TABLE"])["Items"]
    assert len(records) == 1 and records[0]["kind"]["S"] == "releases"
    (body,) = [b for s, b, _ in answers if s == 202]
    assert records[0]["query_id"]["S"] == body["release_id"]


# -- partner callbacks -------------------------------------------------------------------------------
@pytest.fixture
def waiting(stack: LocalStack, api: Client) -> Iterator[str]:
    """A release forwarded to every company: all answered in their 200 but tencent and jd, which answer only by
    the callbacks the test makes."""
    release_id = accepted(release(api, stack))
    assert stack.pump_once() == 1
    execution_ended(stack, release_id)
    assert status(api, release_id)["status"] == "forwarded"
    assert stack.partners["tencent"].releases and stack.partners["jd"].releases
    yield release_id


@pytest.mark.parametrize("stack_options", [TENCENT_AND_JD_SILENT])
def test_forged_or_stale_release_callbacks_are_401_and_record_nothing(stack: LocalStack, api: Client,
                                                                     waiting: str) -> None:
    release_id = waiting
    body = {"release_id": release_id, "unbound": 2}
    raw = json.dumps(body).encode()
    tampered = {
        "wrong key": call_back(api, stack, "tencent", body, key=stack.secrets["yztc/partners/jd"]),
        "missing": api.http.post("/v1/partners/tencent/releases", headers={"Content-Type": "application/json"},
                                 body=raw),
        "stale": call_back(api, stack, "tencent", body, timestamp=time.time() - 301),
        "future": call_back(api, stack, "tencent", body, timestamp=time.time() + 360),
        "garbled": call_back(api, stack, "tencent", body, headers={"X-Signature": "00" * 32}),
        "body changed": api.http.post("/v1/partners/tencent/releases",
                                      headers=signing.signed_headers(stack.secrets["yztc/partners/tencent"], raw),
                                      body=raw.replace(b"2}", b"9}")),
    }
    for what, response in tampered.items():
        assert response.status_code == 401, (what, response.body)
        assert error_code(response) == "bad_signature", what
    assert status(api, release_id)["status"] == "forwarded"
    assert replies_to(stack, PHONE) == []
    # Nothing was recorded: a different count is still the first answer (200, not 409).
    assert call_back(api, stack, "tencent", {**body, "unbound": 3}).status_code == 200
    assert call_back(api, stack, "jd", {"release_id": release_id, "unbound": 0}).status_code == 200
    wait_closed(stack, release_id)
    assert replies_to(stack, PHONE) == [release_text(MASKED, {"tencent": 3, "alibaba": 1, "meituan": 2})]


HOSTILE: list[tuple[str, Any, int]] = [
    ("unbound -1", {"unbound": -1}, 400),
    ("unbound 100001", {"unbound": 100_001}, 400),
    ("unbound true", {"unbound": True}, 400),
    ("unbound '3'", {"unbound": "3"}, 400),
    ("unbound 1.0", {"unbound": 1.0}, 400),
    ("unbound 1.5", {"unbound": 1.5}, 400),
    ("unbound null", {"unbound": None}, 400),
    ("no unbound, no error", {}, 400),
    ("unbound and error", {"unbound": 2, "error": "x"}, 400),
    ("error not a string", {"error": 5}, 400),
    ("apps breakdown", {"unbound": 1, "apps": {"微信": 1}}, 400),
    ("a lookup's count field", {"account_count": 1}, 400),
    ("an SMS in the count", {"unbound": "【一证通查】请登录 http://evil.example"}, 400),
]


@pytest.mark.parametrize("stack_options", [TENCENT_AND_JD_SILENT])
def test_release_callbacks_unknown_are_404_and_hostile_are_4xx_and_reach_no_sms(stack: LocalStack, api: Client,
                                                                               waiting: str) -> None:
    """GIVEN a release waiting for tencent and jd, WHEN callbacks come for unknown releases or companies (404),
    with bodies that are not a release answer (400), too large (413), THEN none is recorded: tencent's and jd's
    real answers afterwards are first answers, and the one SMS carries nothing of the hostile bodies."""
    release_id = waiting
    unknown = {
        "unknown release": call_back(api, stack, "tencent", {"release_id": str(uuid.uuid4()), "unbound": 1}),
        "lookup-id shaped": call_back(api, stack, "tencent", {"release_id": "0" * 32, "unbound": 1}),
        "not an id": call_back(api, stack, "tencent", {"release_id": "x", "unbound": 1}),
        "unknown company": api.http.post("/v1/partners/pinduoduo/releases", headers={"X-Timestamp": "1"},
                                         body=b"{}"),
    }
    for what, response in unknown.items():
        assert response.status_code == 404, (what, response.body)
        assert error_code(response) == "not_found", what
    # A lookup's body (lookup_id, account_count) is not a release answer.
    lookup_body = call_back(api, stack, "tencent", {"lookup_id": "0" * 32, "account_count": 1})
    assert lookup_body.status_code == 400 and error_code(lookup_body) == "invalid_request"
    for what, change, expected in HOSTILE:
        body = {"release_id": release_id, **change}
        response = call_back(api, stack, "tencent", body)
        assert response.status_code == expected, (what, response.status_code, response.body)
        assert error_code(response) == "invalid_request", what
    raw_bodies: dict[str, tuple[bytes, int, str]] = {
        "not an object": (b"[1, 2]", 400, "invalid_request"),
        "a string": (b'"recorded"', 400, "invalid_request"),
        "null": (b"null", 400, "invalid_request"),
        "not JSON": (b"{", 400, "invalid_request"),
        "not UTF-8": (b'{"release_id": "' + release_id.encode() + b'", "unbound": 1, "x": "\xff\xfe"}', 400,
                      "invalid_request"),
        "no release id": (b'{"unbound": 1}', 400, "invalid_request"),
        "release id a number": (b'{"release_id": 5, "unbound": 1}', 400, "invalid_request"),
        "release id too long": (json.dumps({"release_id": "a" * 129, "unbound": 1}).encode(), 400,
                                "invalid_request"),
        "over 64 KiB": (json.dumps({"release_id": release_id, "unbound": 1, "pad": "x" * 70_000}).encode(), 413,
                        "payload_too_large"),
    }
    for what, (raw, expected, code) in raw_bodies.items():
        response = call_back(api, stack, "tencent", raw)
        assert response.status_code == expected, (what, response.status_code, response.body)
        assert error_code(response) == code, what
    assert status(api, release_id)["status"] == "forwarded"
    assert replies_to(stack, PHONE) == []
    # Nothing was recorded: these are first answers. jd says it cannot: 暂未返回, its reason shown nowhere.
    assert call_back(api, stack, "tencent", {"release_id": release_id, "unbound": 100_000}).status_code == 200
    error = call_back(api, stack, "jd", {"release_id": release_id, "error": "【一证通查】请登录 http://evil.example"})
    assert error.status_code == 200 and error.json_body == {"status": "recorded"}
    wait_closed(stack, release_id)
    (sms,) = replies_to(stack, PHONE)
    assert sms == release_text(MASKED, {"tencent": 100_000, "alibaba": 1, "jd": None, "meituan": 2})
    assert "evil" not in sms and "京东暂未返回" in sms


@pytest.mark.parametrize("stack_options", [TENCENT_AND_JD_SILENT])
def test_duplicate_release_callback_is_200_and_a_different_count_409_one_sms(stack: LocalStack, api: Client,
                                                                            waiting: str) -> None:
    """GIVEN tencent answered 2, WHEN it answers 2 again (200) and then 3 (409 conflict), and alipay — which answered
    0 in its 200 — calls back 0 (200) and 1 (409), THEN one SMS, with the first answers."""
    release_id = waiting
    body = {"release_id": release_id, "unbound": 2}
    first = call_back(api, stack, "tencent", body)
    assert first.status_code == 200 and first.json_body == {"status": "recorded"}
    duplicate = call_back(api, stack, "tencent", body)
    assert duplicate.status_code == 200 and duplicate.json_body == {"status": "recorded"}
    conflicting = call_back(api, stack, "tencent", {**body, "unbound": 3})
    assert conflicting.status_code == 409 and error_code(conflicting) == "conflict"
    as_error = call_back(api, stack, "tencent", {"release_id": release_id, "error": "changed my mind"})
    assert as_error.status_code == 409 and error_code(as_error) == "conflict"
    assert call_back(api, stack, "alipay", {"release_id": release_id, "unbound": 0}).status_code == 200
    alipay = call_back(api, stack, "alipay", {"release_id": release_id, "unbound": 1})
    assert alipay.status_code == 409 and error_code(alipay) == "conflict"
    assert replies_to(stack, PHONE) == []  # jd has not answered
    assert call_back(api, stack, "jd", {"release_id": release_id, "unbound": 1}).status_code == 200
    wait_closed(stack, release_id)
    assert call_back(api, stack, "jd", {"release_id": release_id, "unbound": 1}).status_code == 200
    expected = release_text(MASKED, {"tencent": 2, "alibaba": 1, "jd": 1, "meituan": 2})
    assert replies_to(stack, PHONE) == [expected]
    assert status(api, release_id)["status"] == "completed"


# -- delivery as for lookups ---------------------------------------------------------------------------
@pytest.mark.parametrize(("stack_options", "requests", "douyin"), [
    (options({"douyin": "flaky"}), 3, 2),  # two 503s, then answered from the retry queue
    (options({"douyin": "reject"}), 1, None),  # a 4xx: permanent, no answer, not retried
    (options({"douyin": "error"}), 1, None),  # {"release_id", "error"} in its 200
], ids=["flaky", "reject", "error"])
def test_release_delivery_retries_transient_failures_and_reports_refusals_as_no_answer(
        stack: LocalStack, api: Client, requests: int, douyin: int | None) -> None:
    """18612345678, recycled since 2023-09-15: bound before it 腾讯2, 抖音2; since it 百度1."""
    run_release(api, stack, "18612345678", "110358")
    assert replies_to(stack, "18612345678") == [release_text("186****5678", {"tencent": 2, "douyin": douyin})]
    assert len(stack.partners["douyin"].releases) == requests
    assert {r["since"] for r in stack.partners["douyin"].releases} == {"2023-09-15"}


# -- a company that never answers --------------------------------------------------------------------
@pytest.mark.parametrize("stack_options", [options({"jd": "silent"}, release_deadline_seconds=8)])
def test_a_silent_company_is_reported_as_no_answer_at_the_release_deadline(stack: LocalStack, api: Client) -> None:
    """GIVEN jd never answers and RELEASE_DEADLINE_SECONDS=8, THEN the execution ends in seconds while the release
    is forwarded; at the deadline, not before, one SMS: 京东暂未返回 and the others' counts; a late answer after it
    is acknowledged and changes nothing."""
    release_id = accepted(release(api, stack))
    assert stack.pump_once() == 1
    ended = execution_ended(stack, release_id)
    assert ended["status"] == "SUCCEEDED"
    assert status(api, release_id)["status"] == "forwarded"
    assert replies_to(stack, PHONE) == []
    record = wait_closed(stack, release_id, timeout=30)
    assert int(record["deadline_at"]) - int(record["created_at"]) == 8
    assert int(record["deadline_at"]) - 1 <= int(record["updated_at"]) <= int(record["deadline_at"]) + 5
    assert replies_to(stack, PHONE) == [release_text(MASKED, {**BEFORE, "jd": None})]
    assert "京东暂未返回" in replies_to(stack, PHONE)[0]
    assert status(api, release_id)["status"] == "completed"
    late = call_back(api, stack, "jd", {"release_id": release_id, "unbound": 1})
    assert late.status_code == 200 and late.json_body == {"status": "recorded"}
    assert len(replies_to(stack, PHONE)) == 1
    assert status(api, release_id)["status"] == "completed"


# -- privacy -------------------------------------------------------------------------------------------
def test_no_phone_id_digits_code_or_since_in_clear_in_tables_executions_queues_or_logs(
        stack: LocalStack, api: Client, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """GIVEN 18612345678 (since 2023-09-15): a mismatching release, a release that completes, then a query,
    THEN no phone number, ID digits or code in clear in any table, execution history, queue message or log; the
    `since` only on the release record; the ID digits gone from it."""
    from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

    from chalicelib import clients
    from chalicelib.storage.models import TABLE_VARS

    caplog.set_level("INFO")
    phone, id_last6, since = "18612345678", "110358", "2023-09-15"
    sent: list[str] = []

    def record_message(params: dict[str, Any], **_: Any) -> None:
        sent.append(json.dumps(params, ensure_ascii=False, default=str))

    sqs = clients.client("sqs")
    for operation in ("SendMessage", "SendMessageBatch"):
        sqs.meta.events.register(f"before-call.sqs.{operation}", record_message)
    try:
        mismatch = run_release(api, stack, phone, "110359")
        release_id = run_release(api, stack, phone, id_last6)
        query = submit(api, stack, phone, id_last6)
        assert query.status_code == 202
        assert stack.pump_once() == 1
        query_id = query.json_body["query_id"]
        wait_finished(stack, query_id)
    finally:
        for operation in ("SendMessage", "SendMessageBatch"):
            sqs.meta.events.unregister(f"before-call.sqs.{operation}", record_message)
    assert replies_to(stack, phone) == [
        mismatch_text("186****5678"),
        release_text("186****5678", {"tencent": 2, "douyin": 2}),
        query_text("186****5678", {"baidu": 1})]
    codes = [m["message"].split("验证码为")[1][:6] for m in stack.read_outbox() if "验证码" in m["message"]]
    assert len(codes) == 3
    events = json.dumps([history(stack, i) for i in (mismatch, release_id, query_id)], default=str,
                        ensure_ascii=False)
    ddb = aws("dynamodb")
    tables = {t: ddb.scan(TableName=stack.env[t])["Items"] for t in TABLE_VARS.values()}
    records = {item["query_id"]["S"]: item for item in tables["QUERIES_TABLE"]}
    assert records[release_id]["since"] == {"S": since}
    assert "id_sealed" not in records[release_id] and "id_sealed" not in records[mismatch]
    assert "since" not in records[mismatch] and "since" not in records[query_id]
    without_since = {t: [{k: v for k, v in item.items() if k != "since"} for item in items]
                     for t, items in tables.items()}
    items = json.dumps(without_since, ensure_ascii=False)
    queued = "\n".join(sent)
    captured = capfd.readouterr()
    formatter = LambdaPowertoolsFormatter()
    logs = "\n".join([captured.out, captured.err, *(formatter.format(r) for r in caplog.records)])
    statuses = json.dumps([status(api, mismatch), status(api, release_id)])
    assert "AskCompanies" in events and release_id in logs and release_id in items and sent  # real runs looked at
    for where, text in (("history", events), ("dynamodb", items), ("queues", queued), ("logs", logs),
                        ("status", statuses)):
        for code in codes:
            assert_clean(text, where, phone=phone, id_last6=id_last6, code=code)
        assert_clean(text, where, phone=phone, id_last6="110359", code=codes[0])
        assert since not in text, f"`since` in {where}"
