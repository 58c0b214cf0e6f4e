"""Phone cards registered to an ID (SPEC §9): the parts of the card lookup that are not the engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chalicelib.privacy import Hasher


def reply_key(hasher: Hasher, name: str, id_number: str, phone_key: str) -> str:
    """HMAC of (name, ID number, phone), as the carrier matched them for the card query: what a card reply to
    that phone reported is kept under it, and a card dispute from that phone for that name and ID number reads
    it (SPEC §10.1). Bound to the phone, so one phone's reply never opens a dispute from another, and to the
    name, so a dispute names its holder as the carrier checked it; nothing in clear. Both routes normalise
    the name and the ID number the same way first (chalicelib/cards/validation.py)."""
    return hasher.digest("card-reply", name, id_number.upper(), phone_key)
