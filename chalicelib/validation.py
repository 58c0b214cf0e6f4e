"""Input rules of SPEC §3: phone, id_last6 and code formats, with normalisation."""
from __future__ import annotations

import re

from chalicelib import errors

_PHONE = re.compile(r"(?:\+?86)?(1[3-9]\d{9})", re.ASCII)
_SEPARATORS = re.compile(r"[\s\-]", re.ASCII)
_ID_LAST6 = re.compile(r"\d{5}[\dXx]", re.ASCII)
_CODE = re.compile(r"\d{6}", re.ASCII)


def normalise_phone(value: object) -> str:
    """'+86 138-1234-5678' -> '13812345678', or InvalidPhone.

    A regex keeps the accepted forms narrow (phonenumbers alone would also take
    letters as vanity digits); phonenumbers then checks the number against the
    allocated mainland mobile ranges, which change over time and which we do not
    want to maintain by hand.
    """
    if not isinstance(value, str):
        raise errors.InvalidPhone()
    match = _PHONE.fullmatch(_SEPARATORS.sub("", value))
    if not match:
        raise errors.InvalidPhone()
    number = match.group(1)
    import phonenumbers  # lazy: its metadata is only needed on the request path

    parsed = phonenumbers.parse(number, "CN")
    mobile_types = (phonenumbers.PhoneNumberType.MOBILE,
                    phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE)
    if not phonenumbers.is_valid_number(parsed) or phonenumbers.number_type(parsed) not in mobile_types:
        raise errors.InvalidPhone()
    return number


def normalise_id_last6(value: object) -> str:
    """Five digits then a digit or X; the first two are the day of birth (01-31)."""
    if not isinstance(value, str) or not _ID_LAST6.fullmatch(value.strip()):
        raise errors.InvalidIdLast6()
    value = value.strip().upper()
    if not 1 <= int(value[:2]) <= 31:
        raise errors.InvalidIdLast6()
    return value


def check_code_format(value: object) -> str:
    if not isinstance(value, str) or not _CODE.fullmatch(value.strip()):
        raise errors.InvalidCodeFormat()
    return value.strip()


def mask_phone(phone: str) -> str:
    return f"{phone[:3]}****{phone[-4:]}"
