"""A small Sphinx extension: before reading the sources, write the generated references (refgen.py) and the wiring
diagrams (wiring.py) into docs/_generated/, which the hand-written pages include. A file is rewritten only when its
text changed, so `scripts/docs serve` (sphinx-autobuild) does not rebuild for ever."""

from __future__ import annotations

from pathlib import Path
from typing import Any

GENERATED = "_generated"


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def generate(out: Path) -> list[str]:
    """Every generated file under `out`; returns the names of those that changed."""
    import refgen
    import wiring

    files = dict(refgen.pages())
    for mode in wiring.MODES:
        files[f"wiring-fail-{mode}.svg"] = wiring.draw(mode)
    return [name for name, text in files.items() if write_if_changed(out / name, text)]


def _builder_inited(app: Any) -> None:
    changed = generate(Path(app.srcdir) / GENERATED)
    if changed:
        from sphinx.util import logging

        logging.getLogger(__name__).info("mask_docs: generated %s", ", ".join(changed))


def setup(app: Any) -> dict[str, Any]:
    app.connect("builder-inited", _builder_inited)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
