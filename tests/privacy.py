"""Looking for personal data in clear, as an auditor would grep for it."""
from __future__ import annotations

import re


def assert_clean(text: str, where: str, *, phone: str, id_last6: str, code: str) -> None:
    needles = {
        "phone": rf"(?<!\d){phone}(?!\d)",
        "phone (+86)": rf"86{phone}",
        "ID digits": rf"(?<![0-9A-Za-z+/]){re.escape(id_last6)}(?![0-9A-Za-z+/])",
        "code": rf"(?<![0-9A-Za-z]){code}(?![0-9A-Za-z])",
    }
    for what, pattern in needles.items():
        found = re.search(pattern, text, flags=re.IGNORECASE)
        assert found is None, f"{what} in clear in {where}: …{text[max(0, found.start() - 60):found.end() + 60]}…"
