"""Dispute ids, and what a partner may answer to a dispute (SPEC §8, §10.1), parsed into one bounded shape.

As for lookups (chalicelib/partners/protocol.py): nothing of a partner's answer travels on except
one of the four registry outcomes and a bounded integer. Everything else is refused.
"""
from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.contracts import DisputeAnswer, DisputeOutcome
from chalicelib.partners.protocol import MAX_ID_LENGTH, Refused

if TYPE_CHECKING:
    from chalicelib.partners.kinds import LookupKind

# 80 random bits in base32: opaque, unguessable, short enough to read out on a hotline call.
DISPUTE_ID = re.compile(r"[A-Z2-7]{16}")


def new_dispute_id() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode()


@dataclass(frozen=True)
class DisputeReply:
    """A partner's answer to one dispute: an outcome and, for `unbound` (`suspended`), the accounts unbound
    (the cards suspended)."""

    dispute_id: str
    outcome: DisputeOutcome
    accounts: int = 0

    def canonical(self) -> str:
        """Equal answers, equal texts (duplicate vs conflict)."""
        return f"{self.outcome.value};{self.accounts}"

    def answer(self) -> DisputeAnswer:
        return {"outcome": self.outcome.value, "accounts": self.accounts}


def dispute_id_of(body: Any) -> str:
    if not isinstance(body, dict):
        raise Refused("not_an_object", "请求体必须是JSON对象。")
    dispute_id = body.get("dispute_id")
    if not isinstance(dispute_id, str) or not dispute_id or len(dispute_id) > MAX_ID_LENGTH:
        raise Refused("bad_dispute_id", "需要dispute_id（非空字符串）。")
    return dispute_id


def parse_dispute_answer(body: Any, kind: LookupKind, max_count: int) -> DisputeReply:
    """Validate a dispute callback body, or an immediate 200 body: one of the kind's outcomes, and its count
    field (`accounts`, `cards`) between 0 and `max_count`."""
    dispute_id = dispute_id_of(body)
    outcome = body.get("outcome")
    if not isinstance(outcome, str) or outcome not in kind.dispute_outcomes:
        raise Refused("bad_outcome", f"outcome必须是{'、'.join(sorted(kind.dispute_outcomes))}之一。")
    field = kind.dispute_count_field
    count = body.get(field, None if outcome == kind.dispute_acted else 0)
    # bool is an int in Python; a partner's `true` is not a count.
    if type(count) is not int or not 0 <= count <= max_count:
        raise Refused(f"bad_{field}", f"{field}必须是0到{max_count}之间的整数。")
    return DisputeReply(dispute_id, DisputeOutcome(outcome), count)
