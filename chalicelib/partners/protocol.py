"""What a partner may send us (SPEC §4), parsed into one bounded shape.

A partner is untrusted input: nothing of its answer travels on except its registry
partner id, integers within bounds and app names the registry lists for that partner.
Everything else is refused (400 on a callback; "no answer" for an immediate 200).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from chalicelib import errors
from chalicelib.contracts import LookupResult
from chalicelib.registry import Partner

# Our lookup ids: the first 32 hex characters of an HMAC (partners/lookups.py); a release's id is its query
# id (contracts.QUERY_ID).
LOOKUP_ID = re.compile(r"[0-9a-f]{32}")
MAX_ID_LENGTH = 128


@dataclass(frozen=True)
class Answer:
    """A partner's answer to one lookup: a count (with an optional per-app breakdown) or an error."""

    lookup_id: str
    count: int | None  # accounts or phone cards; None: the partner reported an error
    apps: tuple[tuple[str, int], ...] = ()  # in the partner's order, names from the registry

    @property
    def is_error(self) -> bool:
        return self.count is None

    def canonical(self) -> str:
        """Order-blind text of what was answered: equal answers, equal texts (duplicate vs conflict)."""
        if self.count is None:
            return "error"
        return f"{self.count};" + ";".join(f"{app}={n}" for app, n in sorted(self.apps))

    def result(self, partner: str) -> LookupResult:
        if self.count is None:
            return {"company": partner, "answered": False}
        result: LookupResult = {"company": partner, "answered": True, "count": self.count}
        if self.apps:
            result["apps"] = dict(self.apps)
        return result


class Refused(errors.InvalidRequest):
    """The answer breaks a bound; `reason` is ours (never partner text), for logs and metrics."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def lookup_id_of(body: Any, field: str = "lookup_id") -> str:
    """The task an answer is for: `lookup_id`, or `release_id` for a release (SPEC §10.2)."""
    if not isinstance(body, dict):
        raise Refused("not_an_object", "请求体必须是JSON对象。")
    lookup_id = body.get(field)
    if not isinstance(lookup_id, str) or not lookup_id or len(lookup_id) > MAX_ID_LENGTH:
        raise Refused(f"bad_{field}", f"需要{field}（非空字符串）。")
    return lookup_id


def _count(value: Any, maximum: int) -> int | None:
    # bool is an int in Python; a partner's `true` is not a count.
    if type(value) is not int or not 0 <= value <= maximum:
        return None
    return value


def parse_answer(body: Any, partner: Partner, max_count: int, count_field: str = "account_count",
                 breakdowns: bool = True, id_field: str = "lookup_id") -> Answer:
    """Validate a callback body or an immediate 200 body against the partner's registry entry.

    `count_field` is what the lookup counts (account_count, card_count for phone cards, unbound for a
    release); per-app breakdowns exist only where `breakdowns` (internet accounts); `id_field` names the task.
    """
    lookup_id = lookup_id_of(body, id_field)
    if "error" in body:
        if not isinstance(body["error"], str) or count_field in body or "apps" in body:
            raise Refused("bad_error", f"error必须是字符串，且不能与{count_field}同时出现。")
        # The partner's reason is not kept: it is free text, and nothing stores or shows it.
        return Answer(lookup_id, None)
    count = _count(body.get(count_field), max_count)
    if count is None:
        raise Refused("bad_count", f"{count_field}必须是0到{max_count}之间的整数。")
    apps = body.get("apps")
    if apps is None:
        return Answer(lookup_id, count)
    if not breakdowns:
        raise Refused("bad_apps", "该类查询的答复不含apps。")
    if not isinstance(apps, dict) or not apps:
        raise Refused("bad_apps", "apps必须是非空对象。")
    unknown = [name for name in apps if name not in partner.apps]
    if unknown:
        raise Refused("unknown_app", f"apps只能使用该企业登记的应用名称：{'、'.join(partner.apps)}。")
    counts = [(name, _count(n, max_count)) for name, n in apps.items()]
    if any(n is None for _, n in counts) or sum(n or 0 for _, n in counts) != count:
        raise Refused("bad_apps", f"apps必须是各应用账号数，且总和等于{count_field}。")
    return Answer(lookup_id, count, tuple((name, int(n or 0)) for name, n in counts))
