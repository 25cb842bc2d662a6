"""Reading built sites in the tests: the local links and images of a page."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path


class Targets(HTMLParser):
    def __init__(self):
        super().__init__()
        self.targets: list[str] = []

    def handle_starttag(self, tag, attrs):  # links, images (the notebooks' figures) and scripts
        target = dict(attrs).get({"a": "href", "img": "src", "script": "src"}.get(tag, ""))
        if target:
            self.targets.append(target)


def internal_targets(page: Path) -> list[str]:
    parser = Targets()
    parser.feed(page.read_text(encoding="utf-8"))
    return [t for t in parser.targets if not re.match(r"^[a-z]+:|^#|^//", t)]


def unresolved(page: Path) -> list[str]:
    """The local targets of a built page that reach no file (a folder resolves to its index.html)."""
    missing = []
    for target in internal_targets(page):
        path = (page.parent / target.split("#")[0].split("?")[0]).resolve()
        if not (path / "index.html" if path.is_dir() else path).is_file():
            missing.append(target)
    return missing
