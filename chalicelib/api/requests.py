"""Reading what a client sends: bounded, strictly decoded, and refused with a 4xx when it is not JSON.

Every body the API reads goes through here, so no route can forget a limit:
- size first, on the raw bytes, before anything else looks at them (413 payload_too_large);
- JSON depth by a scan of the raw bytes before parsing (json.loads recurses: ~1,000 levels is a
  RecursionError, a 500);
- UTF-8 decoded strictly (json.loads(bytes) would take UTF-16/32 and surrogates encoded as bytes);
- no lone surrogates ("\\ud800" is valid JSON but not valid Unicode: it fails later at .encode()).
"""
from __future__ import annotations

import json
import re
from typing import Any

from chalicelib import errors
from chalicelib.partners import kinds

CITIZEN_BODY_LIMIT = 16 * 1024
# Partners and operators send per-app breakdowns and batches: a larger, still bounded, body.
PARTNER_BODY_LIMIT = 64 * 1024
PARTNER_ROUTE_PREFIXES = kinds.PARTNER_ROUTE_PREFIXES
# Our bodies are at most three levels deep (callback -> apps -> count); 32 leaves room for growth.
MAX_JSON_DEPTH = 32
# Opaque ids partners echo back (lookup ids): DynamoDB refuses empty keys, and ours are short.
MAX_ID_LENGTH = 128

_NOT_JSON = "请求体必须是JSON对象。"
_SPECIAL = re.compile(rb'[\[\]{}"\\]')
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = b"[{", b"]}", ord('"'), ord("\\")


def body_limit(resource_path: str) -> int:
    """The largest body a route takes, from its path (so a new route inherits the right one)."""
    return PARTNER_BODY_LIMIT if resource_path.startswith(PARTNER_ROUTE_PREFIXES) else CITIZEN_BODY_LIMIT


def check_size(raw: bytes, resource_path: str) -> None:
    if len(raw) > body_limit(resource_path):
        raise errors.PayloadTooLarge(f"请求体不得超过{body_limit(resource_path) // 1024} KiB。")


def deeper_than(raw: bytes, limit: int) -> bool:
    """True if JSON brackets outside strings nest deeper than `limit`.

    Looks only at brackets, quotes and backslashes (a regex finds them), so it is linear in the body
    and never recurses, whatever the input; an escaped character inside a string is skipped.
    """
    depth = 0
    in_string = False
    skip_to = -1
    for match in _SPECIAL.finditer(raw):
        position = match.start()
        if position < skip_to:
            continue
        char = raw[position]
        if in_string:
            if char == _BACKSLASH:
                skip_to = position + 2
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            if depth > limit:
                return True
        elif char in _CLOSE:
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(raw: bytes | None) -> Any:
    """Any JSON value from a UTF-8 body, or InvalidRequest; never a RecursionError or a bad string."""
    raw = raw or b""
    if deeper_than(raw, MAX_JSON_DEPTH):
        raise errors.InvalidRequest("JSON嵌套层数过多。")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
        # Lone surrogates parse but cannot be encoded: find them now, not in DynamoDB or SNS.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError) as exc:  # UnicodeError and JSONDecodeError are ValueErrors
        raise errors.InvalidRequest(_NOT_JSON) from exc
    return value


def parse_json_object(raw: bytes | None) -> dict[str, Any]:
    """The body as a JSON object, or InvalidRequest."""
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise errors.InvalidRequest(_NOT_JSON)
    return body


def require_fields(body: dict[str, Any], *names: str) -> list[Any]:
    missing = [name for name in names if body.get(name) is None]
    if missing:
        raise errors.InvalidRequest(f"缺少字段：{', '.join(missing)}。")
    return [body[name] for name in names]


def require_id(body: dict[str, Any], name: str) -> str:
    """A non-empty, bounded string id (an empty one would reach DynamoDB as an invalid key)."""
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise errors.InvalidRequest(f"{name}必须是非空字符串。")
    return value
