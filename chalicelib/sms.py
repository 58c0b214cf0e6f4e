"""Every SMS the service sends (SPEC §5): texts and the SNS sender."""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
class PartnerAnswer:
    """One asked partner's line in a reply: a company's accounts, or an operator's phone cards."""

    name: str
    count: int | None  # None: no answer yet (暂未返回)
    apps: Mapping[str, int] | None = None  # companies only: the per-app breakdown


def code_text(code: str) -> str:
    return f"{PREFIX}您的验证码为{code}，5分钟内有效。如非本人操作，请忽略。"


def result_text(phone: str, answers: Iterable[PartnerAnswer]) -> str:
    """The result SMS; per-app breakdowns are the first thing dropped if it would not fit SNS's limit."""
    answers = list(answers)
    text = _result_text(phone, answers, breakdowns=True)
    if len(text.encode()) > MAX_MESSAGE_BYTES:
        text = _result_text(phone, answers, breakdowns=False)
    return text


def _result_text(phone: str, answers: list[PartnerAnswer], breakdowns: bool) -> str:
    parts = []
    total = 0
    for answer in answers:
        if answer.count is None:
            parts.append(f"{answer.name}暂未返回")
            continue
        total += answer.count
        part = f"{answer.name}{answer.count}个"
        if answer.apps and breakdowns:
            part += "（" + "，".join(f"{app}{n}个" for app, n in answer.apps.items()) + "）"
        parts.append(part)
    return (f"{PREFIX}您的手机号{mask_phone(phone)}关联的互联网账号：{'，'.join(parts)}。"
            f"已返回企业共{total}个账号。如有异议，请通过“解绑与明细查询”联系相关企业。")


def release_result_text(phone: str, answers: Sequence[PartnerAnswer]) -> str:
    """The one SMS of a number release (SPEC §10.2): every company in registry order, 暂未返回 for no answer,
    registry names and bounded integers only."""
    parts = [f"{a.name}暂未返回" if a.count is None else f"{a.name}{a.count}个" for a in answers]
    total = sum(a.count or 0 for a in answers)
    return (f"{PREFIX}您的手机号{mask_phone(phone)}二次号码解绑结果：{'，'.join(parts)}。"
            f"共解绑{total}个在您使用本号码前绑定的账号。")


def mismatch_text(phone: str) -> str:
    return (f"{PREFIX}您的手机号{mask_phone(phone)}查询未成功：手机号码与身份证号码后六位不匹配，"
            "请核对后于24小时后重新查询。")


def card_mismatch_text(phone: str) -> str:
    """A phone-card query whose phone is not registered to that name and ID number (SPEC §9)."""
    return (f"{PREFIX}您的手机号{mask_phone(phone)}查询未成功：手机号码与姓名、身份证号码不匹配，"
            "请核对后于24小时后重新查询。")


def unavailable_text(phone: str) -> str:
    return f"{PREFIX}您的手机号{mask_phone(phone)}查询未成功：暂时无法完成查询，请于24小时后重新查询。"


CARD_DISPUTE = "如有异议，请联系相关企业核实、关停或销户。"


def card_result_text(answers: Sequence[tuple[str, int | None]]) -> str:
    """The card query's reply SMS (SPEC §9); never the name nor the ID number.

    `answers` holds, in registry order, (operator name, card count or None = no answer yet).

    - Only operators with at least one card are named, in registry order, with the total:
      `您名下在网移动电话卡共3张：中国移动广东公司2张，中国联通北京分公司1张。`
    - K operators without an answer: `另有K家企业暂未返回。` right before `如有异议…`.
    - No card and every operator answered: `【一证通查】您名下暂无在网移动电话卡。`
    - No card among those that answered while K did not: no "暂无" (the K may hold cards):
      `【一证通查】您名下在网移动电话卡共0张。另有K家企业暂未返回。如有异议，…`
    - It always fits SNS's limit (MAX_MESSAGE_BYTES, UTF-8), whatever the registry's size:
      operators are named in registry order while the whole text fits, and the operators with
      cards that are left are summarised as a last item `其余M家企业共N张`, e.g.
      `…，中国移动广西公司99张，其余87家企业共8613张。` (the total still counts every card).
    """
    with_cards = [(name, count) for name, count in answers if count]
    unanswered = sum(1 for _, count in answers if count is None)
    total = sum(count for _, count in with_cards)
    if not with_cards and not unanswered:
        return f"{PREFIX}您名下暂无在网移动电话卡。"
    pending = f"另有{unanswered}家企业暂未返回。" if unanswered else ""
    if not with_cards:
        return f"{PREFIX}您名下在网移动电话卡共0张。{pending}{CARD_DISPUTE}"

    def text(named: int) -> str:
        parts = [f"{name}{count}张" for name, count in with_cards[:named]]
        rest = with_cards[named:]
        if rest:
            others = f"{len(rest)}家企业共{sum(count for _, count in rest)}张"
            parts.append(f"其余{others}" if parts else others)
        return f"{PREFIX}您名下在网移动电话卡共{total}张：{'，'.join(parts)}。{pending}{CARD_DISPUTE}"

    # From all named down: the first text that fits names the most operators.
    for named in range(len(with_cards), -1, -1):
        candidate = text(named)
        if len(candidate.encode()) <= MAX_MESSAGE_BYTES:
            return candidate
    return candidate  # unreachable: with nothing named the text is about 150 bytes


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


# -- card disputes (SPEC §10.1): X the operator's name, H its hotline (or 该企业客服 where it has none) ----------
NO_HOTLINE = "该企业客服"


def card_dispute_submitted_text(operator: str, dispute_id: str) -> str:
    return f"{PREFIX}您对{operator}名下号码的核查申请已提交（编号{dispute_id}），企业将在15天内处理，结果将以短信告知。"


def card_dispute_outcome_text(outcome: str, operator: str, hotline: str, dispute_id: str, cards: int = 0) -> str:
    """The one outcome SMS of a card dispute; `outcome` is a contracts.DisputeOutcome value."""
    hotline = hotline or NO_HOTLINE
    handled = f"{PREFIX}{operator}已处理您的核查申请（编号{dispute_id}）："
    texts = {
        "suspended": f"{handled}已对{cards}张未经您本人核验的号码停机，如需恢复请本人持证件到营业厅办理。",
        "owner_confirmed": f"{handled}经核实，相关号码均为您本人办理。如有疑问请致电{hotline}。",
        "no_card": f"{handled}未发现登记在您名下的号码。",
        "rejected": f"{PREFIX}{operator}未能受理您的核查申请（编号{dispute_id}），请致电{hotline}。",
        "expired": f"{PREFIX}{operator}未在15天内答复您的核查申请（编号{dispute_id}），请致电{hotline}。",
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


class ExactlyOnce:
    """One SMS per key, even when the workflow step that sends it is retried.

    Powertools Idempotency keyed by `event_key` (a JMESPath into the delivery): a retried step finds
    the completed record and publishes nothing. Without a persistence store (tests of pure logic)
    every call sends. A permanent refusal (SmsRejected) is left to the caller to count.
    """

    def __init__(self, sender: SmsSender, persistence: Any | None, event_key: str,
                 expires_after_seconds: int) -> None:
        self._sender = sender
        self.idempotency: Any = None
        self.send: Any = self._deliver
        if persistence is not None:
            from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

            self.idempotency = IdempotencyConfig(event_key_jmespath=event_key,
                                                 expires_after_seconds=expires_after_seconds)
            self.send = idempotent_function(self._deliver, data_keyword_argument="delivery",
                                            persistence_store=persistence, config=self.idempotency)

    def _deliver(self, delivery: dict[str, Any]) -> dict[str, Any]:
        from chalicelib import telemetry

        try:
            message_id = self._sender.send(delivery["phone"], delivery["message"])
        except SmsRejected:
            raise  # permanent: the caller ends what it was doing
        except Exception:
            telemetry.count("SmsFailed")
            raise  # transient: the step is retried by the workflow
        telemetry.count("SmsSent")
        return {"message_id": message_id}
