"""Phone cards registered to an ID (SPEC §9): the parts of the card lookup that are not the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.privacy import Hasher


def reply_key(hasher: Hasher, id_number: str, phone_key: str) -> str:
    """HMAC of (ID number, phone): what a card reply to that phone reported is kept under it, and a card
    dispute from that phone for that ID number reads it (SPEC §10.1). Bound to the phone, so one phone's
    reply never opens a dispute from another; nothing in clear."""
    return hasher.digest("card-reply", id_number.upper(), phone_key)
