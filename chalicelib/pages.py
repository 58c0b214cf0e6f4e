"""What is served from the bundle as is: the H5 query page (no CDN, no build step; its widget inlined),
the OpenAPI file."""
from __future__ import annotations

import functools
import os
import re

# Where index.html takes the proof-of-work widget (SPEC §3), and the widget: npm `altcha`'s single-file
# browser build, which `make widget` copies into the bundle (gitignored; see the Makefile).
WIDGET_PLACEHOLDER = "<!-- altcha widget -->"
WIDGET_FILE = os.path.join(os.path.dirname(__file__), "page", "vendor", "altcha.js")


@functools.cache
def index_html() -> str:
    """The page, the widget inlined in it: one response, nothing from another host, no extra route.

    Without the vendored file (the app run without make) the page is served without the widget and
    works for everything that needs no challenge; a code request answered 428 then says why it stops."""
    with open(os.path.join(os.path.dirname(__file__), "page", "index.html"), encoding="utf-8") as fh:
        html = fh.read()
    return html.replace(WIDGET_PLACEHOLDER, widget_script(), 1)


def widget_script() -> str:
    try:
        with open(WIDGET_FILE, encoding="utf-8") as fh:
            code = fh.read()
    except FileNotFoundError:
        return "<!-- altcha widget not installed: run make widget -->"
    # Inline, a "</script" in a string or a regular expression would end the element early; "<\/" means the
    # same there (in a /…/u regular expression too, where "/" may be escaped).
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return f'<script id="altcha-widget-script">{code}</script>'


@functools.cache
def openapi_json() -> str:
    """The API's OpenAPI 3.1 description (chalicelib/api/openapi.json, bundled with the Lambda)."""
    with open(os.path.join(os.path.dirname(__file__), "api", "openapi.json"), encoding="utf-8") as fh:
        return fh.read()
