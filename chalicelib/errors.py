"""Domain exceptions. Each names a stable error code and a Chinese message.

The HTTP status for each class is chosen in one place: chalicelib/api/responses.py.
"""
from __future__ import annotations


class ServiceError(Exception):
    code = "internal_error"
    message = "服务暂时出现问题，请稍后再试。"

    def __init__(self, message: str | None = None, *, retry_after: int | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.retry_after = retry_after


class InvalidRequest(ServiceError):
    code = "invalid_request"
    message = "请求格式不正确。"


class InvalidPhone(ServiceError):
    code = "invalid_phone"
    message = "请输入正确的11位中国大陆手机号码。"


class InvalidIdLast6(ServiceError):
    code = "invalid_id_last6"
    message = "请输入正确的身份证号码后六位（前五位为数字，最后一位为数字或X）。"


class InvalidName(ServiceError):
    code = "invalid_name"
    message = "请输入正确的姓名（2至30个字符，可含汉字、字母、“·”和空格）。"


class InvalidIdNumber(ServiceError):
    code = "invalid_id_number"
    message = "请输入正确的18位身份证号码（最后一位为数字或X）。"


class InvalidCodeFormat(ServiceError):
    code = "invalid_code_format"
    message = "验证码为6位数字。"


class WrongCode(ServiceError):
    code = "wrong_code"
    message = "验证码错误或已失效，请重新获取。"


class ChallengeRequired(ServiceError):
    """SPEC §3 proof of work: this code request needs a solved challenge; the answer carries a fresh one."""

    code = "challenge_required"
    message = "请先完成人机验证，再获取验证码。"

    def __init__(self, challenge: dict[str, object], message: str | None = None) -> None:
        super().__init__(message)
        self.challenge = challenge


class QueryLimit(ServiceError):
    code = "query_limit"
    message = "该号码24小时内已提交过查询，请稍后再试。"


class ReleaseLimit(ServiceError):
    code = "release_limit"
    message = "该号码30天内已申请过二次号码解绑（或正在处理中），请稍后再试。"


class TooManyRequests(ServiceError):
    code = "too_many_requests"
    message = "操作过于频繁，请稍后再试。"


class ServiceBusy(ServiceError):
    code = "service_busy"
    message = "短信通道繁忙，请稍后再试。"


class SmsChannelFull(ServiceBusy):
    """Every shard of this second's SMS-channel counter is full (SPEC §3): the same 503, told apart by type."""


class NotFound(ServiceError):
    code = "not_found"
    message = "未找到相关记录。"


class Forbidden(ServiceError):
    """Refused at the edge: the partner routes from outside partner networks, or a WAF rule."""

    code = "forbidden"
    message = "无权访问。"


class MethodNotAllowed(ServiceError):
    code = "method_not_allowed"
    message = "该地址不支持此请求方法。"


class PayloadTooLarge(ServiceError):
    code = "payload_too_large"
    message = "请求体过大。"


class UnsupportedMediaType(ServiceError):
    code = "unsupported_media_type"
    message = "请求体须为JSON（Content-Type: application/json）。"


class BadSignature(ServiceError):
    code = "bad_signature"
    message = "签名缺失、错误或已过期。"


class Conflict(ServiceError):
    code = "conflict"
    message = "该查询已有不同的结果。"


class InvalidCompany(ServiceError):
    code = "invalid_company"
    message = "请选择参与查询的企业。"


class InvalidOperator(ServiceError):
    code = "invalid_operator"
    message = "请选择办理号码的电信企业。"


class NothingToDispute(ServiceError):
    code = "nothing_to_dispute"
    message = "近7天内该号码的查询结果中，该企业没有关联账号，无需申请核查。"


class DisputeLimit(ServiceError):
    code = "dispute_limit"
    message = "该企业已有处理中的核查申请，或今日已提交3次核查申请，请稍后再试。"


# Workflow-side errors: their class names are the Step Functions error names
# matched by Retry/Catch in stepfunctions/query.asl.json.
class WorkflowError(Exception):
    pass


class CarrierUnavailable(WorkflowError):
    """The carrier did not answer (5xx, timeout, connection error): retried."""
