"""Sphinx configuration of the manual: MyST Markdown pages, the Furo theme, and the references that
docs/_ext/mask_docs.py generates from the code at build time. Build it with scripts/docs."""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS / "_ext"), str(DOCS.parent)]

from appliance import __version__  # noqa: E402  (after the path above)

project = "mask-appliance"
author = "the mask-appliance authors"
copyright = "the mask-appliance authors"  # noqa: A001 (Sphinx's name)
release = version = __version__

extensions = ["myst_parser", "mask_docs"]
source_suffix = {".md": "markdown"}
root_doc = "index"
# docs/_generated holds what mask_docs writes; the pages include it, it is not a page of its own.
exclude_patterns = ["_generated", "_build", "results/*.json"]

# Every heading up to level 4 gets an anchor, so that [x](page.md#anchor) links are checked (-n -W).
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "deflist", "attrs_inline"]
myst_links_external_new_tab = False
nitpicky = True

html_theme = "furo"
html_title = f"mask-appliance {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
