"""Every SMS the service sends (SPEC §5): texts and the SNS sender."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from chalicelib import clients
from chalicelib.config import settings
from chalicelib.validation import mask_phone

PREFIX = "【一证通查】"
# SNS answers these when the account's SMS throughput is exhausted.
_BUSY_CODES = {"Throttling", "ThrottlingException", "ThrottledException", "TooManyRequestsException"}
# ... and these when the message can never be sent: retrying only delays the query's ending.
_PERMANENT_CODES = {"InvalidParameter", "InvalidParameterValue", "OptedOut", "OptedOutException",
                    "EndpointDisabled", "InvalidParameterException"}
# SNS refuses an SMS of 1,600 bytes or more (InvalidParameter).
MAX_MESSAGE_BYTES = 1599


class SmsChannelBusy(Exception):
    """SNS refused the message for throughput: tell the citizen to try later."""


class SmsRejected(Exception):
    """SNS refused the message for good; `code` is SNS's error code (no personal data)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True)
class CompanyAnswer:
    name: str
    account_count: int | None  # None: no answer yet (暂未返回)
    apps: Mapping[str, int] | None = None


def code_text(code: str) -> str:
    return f"{PREFIX}您的验证码为{code}，5分钟内有效。如非本人操作，请忽略。"


def result_text(phone: str, answers: Iterable[CompanyAnswer]) -> str:
    """The result SMS; per-app breakdowns are the first thing dropped if it would not fit SNS's limit."""
    answers = list(answers)
    text = _result_text(phone, answers, breakdowns=True)
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        text = _result_text(phone, answers, breakdowns=False)
    return text


def _result_text(phone: str, answers: list[CompanyAnswer], breakdowns: bool) -> str:
    parts = []
    total = 0
    for answer in answers:
        if answer.account_count is None:
            parts.append(f"{answer.name}暂未返回")
            continue
        total += answer.account_count
        part = f"{answer.name}{answer.account_count}个"
        if answer.apps and breakdowns:
            part += "（" + "，".join(f"{app}{n}个" for app, n in answer.apps.items()) + "）"
        parts.append(part)
    return (f"{PREFIX}您的手机号{mask_phone(phone)}关联的互联网账号：{'，'.join(parts)}。"
            f"已返回企业共{total}个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")


def mismatch_text(phone: str) -> str:
    return (f"{PREFIX}您的手机号{mask_phone(phone)}查询未成功：手机号码与身份证号码后六位不匹配，"
            "请核对后于24小时后重新查询。")


def unavailable_text(phone: str) -> str:
    return f"{PREFIX}您的手机号{mask_phone(phone)}查询未成功：暂时无法完成查询，请于24小时后重新查询。"


# -- disputes (SPEC §8): X the company name, H its hotline, ID the dispute id ----------------------
def dispute_submitted_text(company: str, dispute_id: str) -> str:
    return f"{PREFIX}您对{company}账号的核查申请已提交（编号{dispute_id}），企业将在15天内处理，结果将以短信告知。"


def dispute_outcome_text(outcome: str, company: str, hotline: str, dispute_id: str, accounts: int = 0) -> str:
    """The one outcome SMS of a dispute; `outcome` is a contracts.DisputeOutcome value."""
    handled = f"{PREFIX}{company}已处理您的核查申请（编号{dispute_id}）："
    texts = {
        "unbound": f"{handled}已解除{accounts}个账号与您手机号的绑定。",
        "owner_confirmed": f"{handled}经核实，相关账号为您本人注册。如有疑问请致电{hotline}。",
        "no_account": f"{handled}未发现与您手机号绑定的账号。",
        "rejected": f"{PREFIX}{company}未能受理您的核查申请（编号{dispute_id}），请致电{hotline}。",
        "expired": f"{PREFIX}{company}未在15天内答复您的核查申请（编号{dispute_id}），请致电{hotline}。",
    }
    return texts[outcome]


class SmsSender:
    def __init__(self, sns_client: Any | None = None, sender_id: str | None = None) -> None:
        self._sns = sns_client
        self._sender_id = sender_id or settings().sms_sender_id

    def send(self, phone: str, message: str) -> str:
        sns = self._sns or clients.client("sns")
        try:
            response = sns.publish(
                PhoneNumber=f"+86{phone}",
                Message=message,
                MessageAttributes={
                    "AWS.SNS.SMS.SenderID": {"DataType": "String", "StringValue": self._sender_id},
                    "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": "Transactional"},
                },
            )
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in _BUSY_CODES:
                raise SmsChannelBusy() from exc
            if code in _PERMANENT_CODES:
                raise SmsRejected(code) from exc
            raise
        return str(response["MessageId"])
