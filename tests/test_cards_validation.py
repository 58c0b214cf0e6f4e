"""SPEC §9 input rules: the holder's name and the 18-character ID number (chalicelib/cards/validation.py)."""
from __future__ import annotations

import datetime as dt

import pytest

from chalicelib import errors
from chalicelib.api.responses import error_response
from chalicelib.cards.validation import check_character, normalise_id_number, normalise_name

TODAY = dt.date(2026, 11, 28)


def with_check(first17: str) -> str:
    return first17 + check_character(first17)


# GB 11643's own example, and other numbers whose check characters were computed by hand.
VALID = with_check("11010519491231002")  # 11010519491231002X
assert VALID == "11010519491231002X"


@pytest.mark.parametrize("value, expected", [
    ("11010519491231002X", "11010519491231002X"),
    ("11010519491231002x", "11010519491231002X"),  # x normalised to upper case
    (" 11010519491231002X ", "11010519491231002X"),  # outer spaces
    ("110105 19491231 002X", "11010519491231002X"),  # grouped as printed on the card
    (with_check("44052419010101001"), with_check("44052419010101001")),
    (with_check("44010620000229123"), with_check("44010620000229123")),  # leap day
    (with_check("65010219000101001"), with_check("65010219000101001")),  # 1900-01-01, region 65
    (with_check("54010220261128001"), with_check("54010220261128001")),  # born today
    (with_check("15010219851231999"), with_check("15010219851231999")),
])
def test_valid_id_numbers_are_normalised(value: str, expected: str) -> None:
    assert normalise_id_number(value, TODAY) == expected


def _wrong_check(number: str) -> str:
    return number[:17] + next(c for c in "0123456789X" if c != number[17])


@pytest.mark.parametrize("value", [
    _wrong_check(VALID),  # a wrong check character
    "110105194912310021",
    "11010519491231002Y",
    with_check("11010519990230002"),  # 1999-02-30 does not exist
    with_check("11010520010229002"),  # not a leap year
    with_check("11010519991301002"),  # month 13
    with_check("11010519990100002"),  # day 00
    with_check("11010520261129002"),  # tomorrow: in the future
    with_check("11010530000101002"),  # far future
    with_check("11010518991231002"),  # before 1900
    with_check("00010519491231002"),  # no province 00
    with_check("16010519491231002"),  # no province 16
    with_check("71010519491231002"),  # 台湾: not in this scheme
    with_check("81010519491231002"),  # 香港
    with_check("99010519491231002"),
    "11010519491231002",  # 17 characters
    "11010519491231002XX",  # 19
    "1101051949123100X2",  # X only last
    "A1010519491231002X",  # letters
    "11010519491231002A",
    "１１０１０５１９４９１２３１００２Ｘ",  # full-width digits
    "11010519491231002²",  # str.isdigit() says yes
    "1101051949123100²X",
    "١١٠١٠٥١٩٤٩١٢٣١٠٠٢X",  # Arabic-Indic digits
    "11010519491231002\ud800",  # a lone surrogate
    "\udc0011010519491231002X",
    "",
    "   ",
    "110105\n19491231002X",  # a newline is not a separator
])
def test_invalid_id_numbers(value: str) -> None:
    with pytest.raises(errors.InvalidIdNumber):
        normalise_id_number(value, TODAY)


@pytest.mark.parametrize("value", [None, 11010519491231002, 1.5, True, ["11010519491231002X"],
                                   {"id": "11010519491231002X"}, b"11010519491231002X"])
def test_id_number_of_the_wrong_type(value: object) -> None:
    with pytest.raises(errors.InvalidIdNumber):
        normalise_id_number(value, TODAY)


def test_every_check_character_is_reachable_and_only_one_is_right() -> None:
    seen = set()
    for sequence in range(100, 160):
        first17 = f"11010519491231{sequence:03d}"
        right = check_character(first17)
        seen.add(right)
        for candidate in "0123456789X":
            number = first17 + candidate
            if candidate == right:
                assert normalise_id_number(number, TODAY) == number
            else:
                with pytest.raises(errors.InvalidIdNumber):
                    normalise_id_number(number, TODAY)
    assert seen == set("0123456789X")


@pytest.mark.parametrize("value, expected", [
    ("张三", "张三"),
    ("  张三  ", "张三"),
    ("欧阳娜娜", "欧阳娜娜"),
    ("阿依古丽·买买提", "阿依古丽·买买提"),
    ("阿依古丽・买买提", "阿依古丽·买买提"),  # katakana middle dot typed for ·
    ("阿依古丽•买买提", "阿依古丽·买买提"),  # bullet
    ("阿依古丽 · 买买提", "阿依古丽·买买提"),
    ("爱新觉罗·溥仪", "爱新觉罗·溥仪"),
    ("John Smith", "John Smith"),
    ("John   Smith", "John Smith"),  # inner runs of spaces collapse
    ("John\u3000Smith", "John Smith"),  # a full-width space
    ("ＪＯＨＮ", "JOHN"),  # full-width letters
    ("王𠮷", "王𠮷"),  # a rare character outside the BMP (extension B)
    ("李〇", "李〇"),
    ("张" * 30, "张" * 30),
    ("Li", "Li"),
])
def test_valid_names_are_normalised(value: str, expected: str) -> None:
    assert normalise_name(value) == expected


@pytest.mark.parametrize("value", [
    "张",  # too short
    "a",
    " 张 ",
    "张" * 31,  # too long
    "A" * 31,
    "张三3",  # digits
    "张三²",
    "张三😀",  # emoji
    "😀😀",
    "张三!",
    "张-三",
    "<script>",
    "·张三",  # the separator only between parts
    "张三·",
    "张··三",
    "··",
    "   ",
    "",
    "张\ud800三",  # a lone surrogate
    "\udfff\udfff",
    "张\n三",
    "张\t三",
    "Zhang\u0301",  # a combining accent
    "Ωμέγα",  # letters, but not ASCII
    "김철수",  # Hangul is not a Chinese character
])
def test_invalid_names(value: str) -> None:
    with pytest.raises(errors.InvalidName):
        normalise_name(value)


@pytest.mark.parametrize("value", [None, 12, 1.0, False, ["张三"], {"name": "张三"}, b"\xe5\xbc\xa0"])
def test_name_of_the_wrong_type(value: object) -> None:
    with pytest.raises(errors.InvalidName):
        normalise_name(value)


@pytest.mark.parametrize("error, code", [(errors.InvalidName(), "invalid_name"),
                                         (errors.InvalidIdNumber(), "invalid_id_number")])
def test_both_errors_answer_400_in_the_one_error_shape(error: errors.ServiceError, code: str) -> None:
    import json

    response = error_response(error)
    assert response.status_code == 400
    body = json.loads(response.body)
    assert body["error"]["code"] == code
    assert body["error"]["message"] and all("\u4e00" <= c <= "\u9fff" for c in body["error"]["message"][:2])
