"""The console in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright) against
a real `tideserve up` serving the bundled model. Screenshots of every page land in
$TIDESERVE_TEST_ARTIFACTS/console (default: .artifacts/console in the checkout)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.controlplane.conftest import Platform, _cleanup, free_port
from tideserve.resources.bootstrap import DEFAULT_SERVICE

playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialing Google's hosts, which this closed
# network refuses; --no-sandbox because CI runs as root.
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).parents[2]
ARTIFACTS = Path(os.environ.get("TIDESERVE_TEST_ARTIFACTS", ROOT / ".artifacts")) / "console"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """SQLite only: the console reads the same API whatever the store, and the API is tested on both."""
    p = Platform(tmp_path_factory.mktemp("home"), free_port(), None)
    p.start("--metrics-interval", "1")
    p.wait_service(DEFAULT_SERVICE, timeout=300)
    yield p
    _cleanup(p)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: apt-get install chromium")
    with playwright.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Console:
    """A logged-in page plus the errors the page raised, which a test must end without."""

    def __init__(self, page: object, platform: Platform) -> None:
        self.page = page
        self.platform = platform
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, route: str) -> None:
        self.page.goto(f"{self.platform.url}/#/{route}")

    def login(self, key: str | None = None) -> None:
        """With the admin key (the default), returns once the console shows."""
        self.page.goto(self.platform.url + "/")
        self.page.fill("input[name=key]", key or self.platform.key)
        self.page.click("form.login button[type=submit]")
        if key is None:
            self.page.wait_for_selector("aside nav")

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.fixture
def console(browser: object, platform: Platform) -> Iterator[Console]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    c = Console(context.new_page(), platform)
    yield c
    context.close()
    assert not c.errors, c.errors
