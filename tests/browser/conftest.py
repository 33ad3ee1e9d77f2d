"""Real-Chromium fixtures: one browser per session, a fresh context per test, real servers.

Debian's chromium (``make setup`` installs it) is driven by Playwright for Python; no
browser is ever downloaded. Servers are real ``webfl serve`` processes (``tests/servers.py``)
on free loopback ports, each with its own data dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM, CHROMIUM_ARGS, HostSite
from servers import ServerProcess, start_server


@pytest.fixture(scope="session")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (make setup installs Debian's chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    yield context
    context.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """``serve(*args)`` starts a ``webfl serve`` with extra flags; all are stopped after."""
    servers: list[ServerProcess] = []

    def start(*args: str, **kwargs) -> ServerProcess:
        server = start_server(tmp_path / f"data{len(servers)}", *args, **kwargs)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def host_site() -> Iterator:
    """``host_site({path: html})`` starts a site on a new origin; all are closed after."""
    sites: list[HostSite] = []

    def start(pages: dict[str, str]) -> HostSite:
        site = HostSite(pages)
        sites.append(site)
        return site

    yield start
    for site in sites:
        site.close()
