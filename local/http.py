"""The local API server: Chalice's local gateway plus the local-only SMS outbox page.

/local/sms exists only here: deployed stages serve app.py, which has no such route.
"""
from __future__ import annotations

import html
import json

from chalice.local import ChaliceRequestHandler

from local.lambdas import acting_as


class LocalRequestHandler(ChaliceRequestHandler):
    outbox = ".local/sms-outbox.jsonl"

    def log_message(self, format: str, *args: object) -> None:
        pass  # request lines would bury the SMS lines on the console

    def _generic_handle(self) -> None:
        if self.path.split("?")[0] in ("/local/sms", "/local/sms.json"):
            self._outbox()
            return
        with acting_as("APIHandler"):
            super()._generic_handle()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = do_PATCH = do_OPTIONS = _generic_handle

    def _messages(self) -> list[dict[str, str]]:
        try:
            with open(self.outbox, encoding="utf-8") as fh:
                return [json.loads(line) for line in fh if line.strip()]
        except FileNotFoundError:
            return []

    def _outbox(self) -> None:
        messages = list(reversed(self._messages()))
        if self.path.startswith("/local/sms.json"):
            body = json.dumps({"messages": messages}, ensure_ascii=False).encode()
            content_type = "application/json; charset=utf-8"
        else:
            rows = "".join(
                f"<li><span class=meta>{html.escape(m['sent_at'])} → {html.escape(m['phone'])}</span>"
                f"<p>{html.escape(m['message'])}</p></li>" for m in messages) or "<li>暂无短信</li>"
            body = (
                "<!doctype html><html lang=zh-CN><head><meta charset=utf-8>"
                "<meta name=viewport content='width=device-width,initial-scale=1'>"
                "<title>本地短信收件箱</title><style>body{font:16px/1.5 sans-serif;margin:1rem;max-width:40rem}"
                "li{border-bottom:1px solid #ccc;padding:.5rem 0;list-style:none}.meta{color:#555;font-size:.85rem}"
                "ul{padding:0}</style></head><body><h1>本地短信收件箱</h1>"
                "<p>仅在本地运行时存在：这里显示发往各号码的短信（验证码与查询结果）。</p>"
                f"<ul id=outbox>{rows}</ul></body></html>").encode()
            content_type = "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
