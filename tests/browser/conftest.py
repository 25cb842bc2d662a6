"""The built site, served on 127.0.0.1, driven by Debian's Chromium through Playwright.

One strict mkdocs build per session into a temporary folder, one static HTTP server on a free port,
one browser. Each test gets a fresh tab that records every request (including the search worker's)
and every console error, so a test can assert that nothing left 127.0.0.1 and nothing failed.
Playwright never downloads a browser here: it launches /usr/bin/chromium (`apt-get install
chromium` on Debian; .ci/run does it).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Keep Chromium from phoning home on its own (updates, sync, field trials), so that every request
# the tests see comes from the pages.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
LOCAL_HOST = "127.0.0.1"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


@dataclass
class Site:
    folder: Path
    base_url: str

    def url(self, page: str) -> str:
        return self.base_url + page

    def json(self, relative: str):
        return json.loads((self.folder / relative).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Site:
    folder = tmp_path_factory.mktemp("site")
    # Bind first: the build must know the address, since instant navigation matches links against
    # the sitemap's URLs, port included (mkdocs.yml reads MOEKB_SITE_URL).
    server = http.server.ThreadingHTTPServer((LOCAL_HOST, 0), functools.partial(QuietHandler, directory=str(folder)))
    base_url = f"http://{LOCAL_HOST}:{server.server_port}/"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MOEKB_SITE_URL": base_url}
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(folder)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        server.server_close()
        pytest.fail(f"mkdocs build --strict failed:\n{build.stdout}\n{build.stderr}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Site(folder, base_url)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium); "
                    "the tests never download a browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Tab:
    """A browser tab and what it did: every request URL and every console error."""

    page: object
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests
                if not (urlsplit(url).scheme in ("data", "blob") or urlsplit(url).hostname == LOCAL_HOST)]

    def assert_clean(self) -> None:
        assert self.foreign_requests() == [], "requests left 127.0.0.1"
        assert self.errors == [], "console errors"


def recording_tab(browser, **context_options):
    """A new context and page whose requests (the page's and its workers') and console errors are kept."""
    context = browser.new_context(service_workers="block", **context_options)
    page = context.new_page()
    record = Tab(page)
    context.on("request", lambda request: record.requests.append(request.url))
    page.on("console", lambda message: record.errors.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    page.on("pageerror", lambda error: record.errors.append(f"page error: {error}"))
    page.set_default_timeout(15_000)
    return context, record


@pytest.fixture
def tab(browser):
    context, record = recording_tab(browser, viewport={"width": 1280, "height": 900})
    yield record
    context.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
