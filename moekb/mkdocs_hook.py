"""mkdocs hook: regenerate ``docs/generated/`` before every build, including ``mkdocs serve``
rebuilds after a YAML edit. An invalid knowledge base aborts the build with the file:line list
and leaves the previous output (and the site being served) as it was."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

from moekb.build import CollectorPause, build, implementation_sources
from moekb.errors import MoekbError
from moekb.graph import citation_graph, cycle_warnings
from moekb.page_shell import pour_pages
from moekb.prerendered import GENERATED_FOLDER, LinkResolver, PrerenderedPage, is_prerendered, nav_titles
from moekb.search import add_to_search_index, search_entries
from moekb.shared_chrome import share_chrome

log = logging.getLogger("mkdocs.moekb")
built = {}  # what earlier events of this build made, for the later ones: kb, links, in_nav
collector = CollectorPause()  # from on_pre_build to the end of the build (moekb.build.CollectorPause)


def on_pre_build(config, **kwargs) -> None:
    collector.pause()
    root = Path(config.config_file_path).resolve().parent
    try:
        kb, written, removed = build(root)
    except MoekbError as err:
        raise PluginError(f"moekb: the knowledge base has {len(err.problems)} problem(s):\n{err}") from None
    log.info("moekb: %d papers; %d generated files written, %d removed", len(kb.papers), written, removed)
    built["kb"] = kb
    # Citation cycles can be legitimate (mutual preprint citations): shown, but at INFO, because
    # a WARNING would fail `mkdocs build --strict`.
    for warning in cycle_warnings(citation_graph(kb, bare=True)):
        log.info("moekb: warning: %s", warning)


def on_files(files, config, **kwargs):
    """Pages the generator wrote as HTML get a page that skips Python-Markdown (moekb.prerendered)."""
    built["links"] = links = LinkResolver(files)
    titles = nav_titles(config.nav)
    for file in files.documentation_pages():
        if is_prerendered(file):  # sets file.page; mkdocs keeps a page a plugin set
            PrerenderedPage(file, config, links, nav_title=titles.get(file.src_uri))
    return files


def on_page_content(html, page, config, files, **kwargs):
    """Generated pages hold raw-HTML tables and lists whose links name .md files, which mkdocs
    only rewrites in Markdown links: rewrite those too (paper pages did it when rendering)."""
    uri = page.file.src_uri
    if isinstance(page, PrerenderedPage) or not (uri.startswith(GENERATED_FOLDER) and uri.endswith(".md")):
        return html
    return built["links"].resolve(html, page, config)


def on_nav(nav, config, files, **kwargs):
    built["in_nav"] = {page.file.src_uri for page in nav.pages}
    return nav


def on_env(env, config, files, **kwargs):
    """Pre-rendered pages outside the navigation share the theme's chrome HTML (moekb.shared_chrome),
    and are poured into a shell of the page template (moekb.page_shell)."""
    in_nav = built.get("in_nav", set())
    env = share_chrome(env, lambda page: isinstance(page, PrerenderedPage) and page.file.src_uri not in in_nav)
    built["shells"] = pour_pages(env)
    return env


@event_priority(-100)  # after the search plugin has written its index (default priority 0)
def on_post_build(config, **kwargs) -> None:
    """Paper and listing pages are left out of the theme's search plugin; add their entries from the knowledge base."""
    collector.resume()
    kb = built.get("kb")
    if kb is None:
        return

    def url_of(page: str) -> str:
        return File(f"{GENERATED_FOLDER}{page}", config.docs_dir, config.site_dir, config.use_directory_urls).url

    implementations = implementation_sources(Path(config.config_file_path).resolve().parent, kb)
    added = add_to_search_index(Path(config.site_dir), search_entries(kb, implementations), url_of)
    log.info("moekb: %d entries added to the search index", added)
    shells = built.get("shells")
    if shells is not None:
        log.info("moekb: %d pages poured into %d page shells (%d shapes rendered by the template)", shells.poured,
                 sum(shell is not None for shell in shells.shells.values()),
                 sum(shell is None for shell in shells.shells.values()))


def on_build_error(error, **kwargs) -> None:
    collector.resume()


def on_shutdown(**kwargs) -> None:
    """mkdocs is about to exit. The interpreter's last collection would walk every object still
    alive (the knowledge base, the theme's templates, every module): about a third of a second
    after a 2000-paper build, once the site is written. Frozen objects are left out of it; the
    memory goes back to the system at exit all the same."""
    gc.freeze()
