"""The proof-of-work rule's pure part (SPEC §3): ALTCHA v1 challenges and their solutions, no AWS."""
from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from chalicelib.challenges import ProofOfWork
from chalicelib.config import settings
from local.altcha import solve

NOW = 1_796_000_000.0


def proof(key: str = "k", now: float = NOW) -> ProofOfWork:
    return ProofOfWork(key=lambda: key, config=settings(), clock=lambda: now)


def encode(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def solved(key: str = "k") -> tuple[dict[str, Any], dict[str, Any]]:
    challenge = proof(key).challenge()
    return challenge, json.loads(base64.b64decode(solve(challenge)))


def test_a_challenge_has_the_spec_fields_and_about_a_second_of_work() -> None:
    challenge = proof().challenge()
    assert set(challenge) == {"algorithm", "challenge", "maxnumber", "salt", "signature"}
    assert challenge["algorithm"] == "SHA-256"
    assert challenge["maxnumber"] == settings().altcha_max_number


def test_a_solved_challenge_is_accepted_with_the_widgets_extra_keys() -> None:
    challenge, solution = solved()
    verified = proof().verify(encode({**solution, "took": 812}))
    assert verified is not None and verified.challenge == challenge["challenge"]


def test_a_solution_older_than_five_minutes_is_refused() -> None:
    _, solution = solved()
    assert proof(now=NOW + 299).verify(encode(solution)) is not None
    assert proof(now=NOW + 300).verify(encode(solution)) is None


def test_a_challenge_signed_with_another_key_is_refused() -> None:
    _, solution = solved(key="someone else's")
    assert proof(key="k").verify(encode(solution)) is None


@pytest.mark.parametrize("change", [
    {"number": -1}, {"number": True}, {"number": "12"}, {"number": 10**9}, {"algorithm": "SHA-1"},
    {"salt": "abc"}, {"salt": 5}, {"challenge": "0" * 64}, {"signature": "f" * 64}, {"signature": None},
])
def test_a_tampered_solution_is_refused(change: dict[str, Any]) -> None:
    _, solution = solved()
    assert proof().verify(encode({**solution, **change})) is None


@pytest.mark.parametrize("encoded", [
    None, 12, "", "not base64!", base64.b64encode(b"not json").decode(), encode([1, 2]), encode("text"),
    encode(["algorithm", "challenge", "number", "salt", "signature"]), encode({}), "A" * 5000,
])
def test_anything_that_is_not_a_solution_is_refused_without_an_error(encoded: Any) -> None:
    assert proof().verify(encoded) is None


def test_the_solution_record_is_named_by_its_challenge_and_held_past_its_expiry() -> None:
    challenge, solution = solved()
    verified = proof().verify(encode(solution))
    assert verified is not None
    once = proof().once(verified)
    assert challenge["challenge"] not in once.key  # a digest names it
    assert once.seconds >= settings().challenge_ttl_seconds


@pytest.mark.parametrize("shape", ["the challenge alone", "a whole 428 body"])
def test_the_curl_helper_solves_a_challenge_from_stdin_alone_or_in_a_428_body(
        shape: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from local import altcha

    challenge = proof().challenge()
    given = challenge if shape == "the challenge alone" else {
        "error": {"code": "challenge_required", "message": "…"}, "challenge": challenge}
    monkeypatch.setattr("sys.argv", ["local.altcha", "-"])
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(given)))
    altcha.main()
    assert proof().verify(capsys.readouterr().out.strip()) is not None
