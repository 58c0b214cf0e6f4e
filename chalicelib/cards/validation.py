"""Input rules of SPEC §9: the holder's name and the 18-character resident ID number.

Both are normalised the way the carrier's real-name record holds them, so that the phone's
carrier (which confirms phone + name + ID number) and the operators see one spelling.
"""
from __future__ import annotations

import datetime as dt
import re
import unicodedata

from chalicelib import errors

NAME_MIN, NAME_MAX = 2, 30
# Chinese characters: the unified ideographs, extension A and the supplementary planes'
# extensions B-H (rare characters do occur in names), plus 〇.
_HAN = "\u3007\u3400-\u4dbf\u4e00-\u9fff\U00020000-\U0002ebef\U00030000-\U000323af"
_NAME = re.compile(rf"[{_HAN}A-Za-z]+(?:[· ][{_HAN}A-Za-z]+)*")
# Lookalikes people type for the separator of transcribed names (阿依古丽·买买提): one spelling.
_DOTS = re.compile("[\u2022\u2027\u2219\u22c5\u30fb\u00b7\uff0e\u0387\u16eb\u2e31\ua78f]")
_SPACES = re.compile(" +")  # after NFKC, which makes U+3000 a space; tabs and newlines stay invalid

# Region code: only the province-level prefix is checked (11-15, 21-23, 31-37, 41-46, 50-54,
# 61-65, GB/T 2260); the county list changes every year and an old card keeps its old code,
# so checking the remaining four digits would refuse valid cards. 71 (台湾), 81/82 (港澳)
# residents hold other documents and are not in the 18-character scheme checked here.
_PROVINCES = frozenset({*range(11, 16), *range(21, 24), *range(31, 38), *range(41, 47),
                        *range(50, 55), *range(61, 66)})
_ID_NUMBER = re.compile(r"(\d{6})(\d{4})(\d{2})(\d{2})(\d{3})([\dX])", re.ASCII)
_ID_SEPARATORS = re.compile(r"[ \-]", re.ASCII)
_WEIGHTS = tuple(2 ** (17 - i) % 11 for i in range(17))  # ISO 7064 MOD 11-2
_CHECK = "10X98765432"
EARLIEST_BIRTH = dt.date(1900, 1, 1)


def normalise_name(value: object) -> str:
    """2-30 characters: Chinese characters, ASCII letters, '·' and spaces, or InvalidName.

    NFKC first (full-width letters become ASCII, compatibility ideographs the unified ones),
    then the usual lookalikes of '·' become U+00B7, outer spaces are trimmed and inner runs
    of spaces (also full-width ones) become one space; tabs and line breaks are refused. A '·'
    or a space only ever separates two parts of the name: never first, last or two in a row.
    """
    if not isinstance(value, str):
        raise errors.InvalidName()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not text
        raise errors.InvalidName() from None
    name = unicodedata.normalize("NFKC", value)
    name = _DOTS.sub("·", name)
    name = _SPACES.sub(" ", name).strip()
    name = re.sub(r" ?· ?", "·", name)  # "阿依古丽 · 买买提" -> "阿依古丽·买买提"
    if not NAME_MIN <= len(name) <= NAME_MAX or not _NAME.fullmatch(name):
        raise errors.InvalidName()
    return name


def check_character(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of the first 17 digits (GB 11643)."""
    return _CHECK[sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True)) % 11]


def normalise_id_number(value: object, today: dt.date) -> str:
    """18 characters (spaces and dashes between groups ignored), or InvalidIdNumber.

    A province-level region prefix, a birth date that exists, not before 1900 and not after
    `today`, a 3-digit sequence and the MOD 11-2 check character (x becomes X). ASCII digits
    only: '²' or Arabic-Indic digits are digits to str.isdigit(), never here.
    """
    if not isinstance(value, str):
        raise errors.InvalidIdNumber()
    match = _ID_NUMBER.fullmatch(_ID_SEPARATORS.sub("", value.strip()).replace("x", "X"))
    if not match:
        raise errors.InvalidIdNumber()
    region, year, month, day, _sequence, check = match.groups()
    if int(region[:2]) not in _PROVINCES:
        raise errors.InvalidIdNumber()
    try:
        born = dt.date(int(year), int(month), int(day))
    except ValueError:  # 19990230, month 13, day 00
        raise errors.InvalidIdNumber() from None
    if not EARLIEST_BIRTH <= born <= today:
        raise errors.InvalidIdNumber()
    number = match.group(0)
    if check_character(number[:17]) != check:
        raise errors.InvalidIdNumber()
    return number
