"""The H5 query page, served from the bundle (no CDN, no build step)."""
from __future__ import annotations

import functools
import os


@functools.cache
def index_html() -> str:
    with open(os.path.join(os.path.dirname(__file__), "page", "index.html"), encoding="utf-8") as fh:
        return fh.read()
