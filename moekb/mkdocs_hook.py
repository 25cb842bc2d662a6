"""mkdocs hook: regenerate the generated pages before every build whose inputs changed.

A convenience, not a part of the site: ``moekb build`` writes the same files, and Zensical (which
runs no hooks) builds the same site from them. After ``moekb build`` the pages are current and the
hook only checks so; under ``mkdocs serve`` every edit to a watched folder regenerates them. An
invalid knowledge base aborts the build with the ``file:line`` list and leaves the previous output
(and the site being served) as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mkdocs.exceptions import PluginError

from moekb.build import build_if_changed
from moekb.errors import MoekbError
from moekb.graph import citation_graph, cycle_warnings

log = logging.getLogger("mkdocs.moekb")


def on_pre_build(config, **kwargs) -> None:
    root = Path(config.config_file_path).resolve().parent
    try:
        result = build_if_changed(root)
    except MoekbError as err:
        raise PluginError(f"moekb: the knowledge base has {len(err.problems)} problem(s):\n{err}") from None
    if result is None:
        log.info("moekb: the generated pages are up to date")
        return
    kb, written, removed = result
    log.info("moekb: %d papers, %d surveys; %d generated files written, %d removed", len(kb.papers), len(kb.surveys),
             written, removed)
    # Citation cycles can be legitimate (mutual preprint citations): shown at INFO, since a
    # WARNING would fail `mkdocs build --strict`.
    for warning in cycle_warnings(citation_graph(kb, bare=True)):
        log.info("moekb: warning: %s", warning)
