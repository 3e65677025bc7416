"""The status page: appliance/reporting/static/status.html, package data read with importlib.resources, and the
Content-Security-Policy it is served with. The page's own inline script and style are pinned by their hashes,
computed here from the file, so the file may be edited freely and nothing injected into it can run.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from html.parser import HTMLParser
from importlib import resources
from typing import Any


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class _Inline(HTMLParser):
    """Collects the text of every inline script and style block, exactly as a browser hashes it (comments and
    attributes are the parser's business, not a regular expression's)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.blocks: list[tuple[str, str]] = []
        self._tag: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._tag, self._text = tag, []

    def handle_data(self, data: str) -> None:
        if self._tag:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._tag:
            self.blocks.append((tag, "".join(self._text)))
            self._tag = None


@functools.cache
def load_page(name: str = "status.html") -> tuple[bytes, str]:
    """(the page's bytes, its Content-Security-Policy) from reporting/static: only the page's own inline scripts
    and styles, by hash, may run. Read once, when a status server is built: a wheel without its package data fails
    there, at start, and only where `[http] listen` is set."""
    text = (resources.files("appliance.reporting") / "static" / name).read_text(encoding="utf-8")
    parser = _Inline()
    parser.feed(text)
    parser.close()
    pinned: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in parser.blocks:
        pinned[tag].append(_hash(body))
    sources = {tag: " ".join(hashes) or "'none'" for tag, hashes in pinned.items()}
    csp = (f"default-src 'none'; script-src {sources['script']}; style-src {sources['style']}; connect-src 'self'; "
           "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text.encode(), csp

