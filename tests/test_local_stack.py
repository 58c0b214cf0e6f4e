"""`make run` as a newcomer gets it: moto server, simulators and the API over real HTTP."""
from __future__ import annotations

import ctypes
import json
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests

from tests.conftest import wait_for
from tests.helpers import make_run

if TYPE_CHECKING:
    from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with make_run(tmp_path_factory.mktemp("local"), QUERY_DEADLINE_SECONDS="8",
                  PARTNER_MODES="meituan=silent,douyin=callback") as running:
        yield running


def outbox(workdir: Path) -> list[dict]:
    path = workdir / "sms-outbox.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def test_a_query_over_http_gets_its_reply_in_the_outbox(local_run: dict[str, Any]) -> None:
    base, workdir = local_run["base"], local_run["workdir"]
    phone = "18612345678"
    response = requests.post(f"{base}/v1/verification-codes", json={"phone": phone}, timeout=10)
    assert response.status_code == 202
    code_sms = outbox(workdir)[-1]
    assert code_sms["phone"] == phone and set(code_sms) == {"phone", "message", "sent_at"}
    code = code_sms["message"].split("验证码为")[1][:6]
    response = requests.post(f"{base}/v1/queries", json={"phone": phone, "id_last6": "110358", "code": code},
                             timeout=10)
    assert response.status_code == 202
    query_id = response.json()["query_id"]

    def replied() -> bool:
        return requests.get(f"{base}/v1/queries/{query_id}", timeout=5).json()["status"] == "replied"

    wait_for(replied, 60, "the reply")
    assert outbox(workdir)[-1]["message"] == (
        "【一证通查】您的手机号186****5678关联的互联网账号：腾讯2个，阿里巴巴0个，支付宝0个，百度1个，快手0个，"
        "抖音2个，京东0个，美团暂未返回。已返回企业共5个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")
    # An operator inspects the execution by its query id, as in the console.
    sfn = boto3.client("stepfunctions", endpoint_url=local_run["moto"], region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="x")
    machine = sfn.list_state_machines()["stateMachines"][0]["stateMachineArn"]
    names = [e["name"] for e in sfn.list_executions(stateMachineArn=machine)["executions"]]
    assert query_id in names
    page = requests.get(f"{base}/local/sms", timeout=5)
    assert page.status_code == 200 and "186****5678" in page.text


def test_sigterm_stops_everything_whichever_thread_receives_it(local_run: dict[str, Any]) -> None:
    # The kernel hands a process's SIGTERM to any thread that does not block it; this one goes to a thread that is
    # not the main one (moto's, a pump's), the case in which a main thread blocked in Event.wait() never stopped.
    process = local_run["process"]
    threads = sorted(int(tid) for tid in os.listdir(f"/proc/{process.pid}/task") if int(tid) != process.pid)
    assert ctypes.CDLL(None, use_errno=True).tgkill(process.pid, threads[-1], signal.SIGTERM) == 0
    assert process.wait(timeout=20) == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{local_run['base']}/v1/companies", timeout=2)
