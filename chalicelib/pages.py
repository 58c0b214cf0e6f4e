"""What is served from the bundle as is: the H5 query page (no CDN, no build step), the OpenAPI file."""
from __future__ import annotations

import functools
import os


@functools.cache
def index_html() -> str:
    with open(os.path.join(os.path.dirname(__file__), "page", "index.html"), encoding="utf-8") as fh:
        return fh.read()


@functools.cache
def openapi_json() -> str:
    """The API's OpenAPI 3.1 description (chalicelib/api/openapi.json, bundled with the Lambda)."""
    with open(os.path.join(os.path.dirname(__file__), "api", "openapi.json"), encoding="utf-8") as fh:
        return fh.read()
