"""End-to-end fixtures: the real ASGI server in a subprocess, and Debian's Chromium.

Run with `uv run pytest -m e2e` (the default `uv run pytest` leaves these tests out).

The server is `uvicorn config.asgi:application` on a free loopback port, with the
project's production settings (DJANGO_DEBUG=false: Secure cookies, HSTS, the production
Content-Security-Policy) over plain HTTP (DJANGO_SECURE_SSL_REDIRECT=false): Chromium counts
loopback as a secure context, so it keeps and sends the Secure cookies there. It has a
SQLite database of its own, and a few settings of its own (SETTINGS_OVERRIDES below): the
offline demo model always answers, slowly enough (E2E_DEMO_MODEL_DELAY seconds per token)
for a test to watch a reply grow. With a channel layer that talks to a server (Redis), the
server under test uses that real server.

Every test saves a screenshot of each page it opened in test-results/e2e/; when a test
fails, the page's HTML and browser console log are kept next to it, and server.log has
the server's output.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.conf import settings
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from . import chat

PROJECT_DIR = Path(__file__).resolve().parents[2]
RESULTS_DIR = PROJECT_DIR / "test-results" / "e2e"

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEMO_MODEL_DELAY = os.environ.get("E2E_DEMO_MODEL_DELAY", "0.02")
# Generous: a loaded CI machine (several projects' suites at once) can take long to start.
SERVER_START_TIMEOUT = 60
SERVER_STOP_TIMEOUT = 20
VIEWPORT = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
AXE_CORE = Path(
    os.environ.get("AXE_CORE_PATH") or PROJECT_DIR / "node_modules" / "axe-core" / "axe.min.js"
)

# Loaded by the server under test instead of config.settings: production settings plus
# what a test run needs of its own. Written at run time, so it stays out of the project.
SETTINGS_OVERRIDES = """\
from config.settings import *  # noqa: F403

# Always the offline demo model, whatever provider .env configures.
LLM_API_KEY = ""
LLM_BASE_URL = None
# collectstatic's output, as in production (hashed names from its manifest): see migrate().
STATIC_ROOT = {static_root!r}
# Test accounts only: a fast hasher, so that signing up takes no noticeable time.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# A channel layer that talks to a shared server (Redis pub/sub channels are shared by
# every client, whatever the database number): a prefix of this run's own keeps runs of
# other projects on the same server from hearing this one.
if "CONFIG" in CHANNEL_LAYERS["default"]:  # noqa: F405
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = {prefix!r}  # noqa: F405
# Rate limits counted in this server process only, and room for every test's sign-up from
# one address (tests/test_accounts.py proves the limits themselves).
CACHES = dict(default=dict(BACKEND="django.core.cache.backends.locmem.LocMemCache"))
ACCOUNT_RATE_LIMITS = dict(ACCOUNT_RATE_LIMITS, signup="1000/m/ip")  # noqa: F405
"""


@pytest.fixture(autouse=True)
def close_async_orm_connections():
    """Overrides tests/conftest.py's: these tests make no async ORM calls (each server under
    test has a database of its own), and Playwright's sync API refuses an event loop."""
    return


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def layer_server_problem() -> str | None:
    """Why the channel layer's server (if it has one) does not answer, or None."""
    for host in settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("hosts", []):
        address = host.get("address") if isinstance(host, dict) else host
        if isinstance(address, str):
            parts = urlsplit(address)
            address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        try:
            socket.create_connection(tuple(address), timeout=5).close()
        except OSError as error:
            return f"the channel layer's server at {address[0]}:{address[1]}: {error}"
    return None


class Server:
    """uvicorn serving config.asgi:application; stop() and start() keep the same port."""

    def __init__(self, workdir: Path, log_path: Path) -> None:
        self.workdir = workdir
        self.log_path = log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        (workdir / "static").mkdir()
        self.layer_prefix = f"e2e-{uuid.uuid4().hex[:8]}"
        self.mailbox = workdir / "mail"  # each mail the server sends, as a file
        (workdir / "e2e_settings.py").write_text(
            SETTINGS_OVERRIDES.format(static_root=str(workdir / "static"), prefix=self.layer_prefix)
        )
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "e2e_settings",
            "PYTHONPATH": os.pathsep.join([str(workdir), str(PROJECT_DIR)]),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{workdir / 'db.sqlite3'}",
            "DEMO_MODEL_DELAY": DEMO_MODEL_DELAY,
            "EMAIL_URL": f"filemail:///{self.mailbox}",
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def migrate(self) -> None:
        """What a deploy does before starting the server: migrate and collectstatic."""
        for command in ("migrate", "collectstatic"):
            result = subprocess.run(  # noqa: S603
                [sys.executable, "manage.py", command, "--no-input", "--verbosity=0"],
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if result.returncode:
                output = f"{result.stdout}{result.stderr}"
                pytest.fail(f"manage.py {command} failed:\n{output}", pytrace=False)

    def start(self) -> None:
        assert self.process is None, "the server is already running"
        self.note(f"starting on port {self.port}")
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "config.asgi:application",
                    "--host=127.0.0.1",
                    f"--port={self.port}",
                    # As the README's deploy command: frames over 128 KiB are refused unread.
                    "--ws-max-size=131072",
                    "--timeout-graceful-shutdown=10",
                ],
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started = time.monotonic()
        while time.monotonic() < started + SERVER_START_TIMEOUT:
            if self.process.poll() is not None:
                self.process = None
                pytest.fail(f"the server exited at start:\n{self.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=2):  # noqa: S310
                    self.note(f"answering {time.monotonic() - started:.1f} s after starting")
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        pytest.fail(f"the server did not answer in time:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        """What a deploy does: SIGTERM; uvicorn closes the sockets (code 1012) and exits."""
        if self.process is None:
            return
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=SERVER_STOP_TIMEOUT)
            outcome = f"exited {time.monotonic() - started:.1f} s after SIGTERM"
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            outcome = f"KILLED: still running {SERVER_STOP_TIMEOUT} s after SIGTERM"
        self.process = None
        self.note(outcome)

    def note(self, text: str) -> None:
        """A line of the test run's own in the server's log."""
        with self.log_path.open("a") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} {text}\n")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def results_dir() -> Path:
    shutil.rmtree(RESULTS_DIR, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True)
    return RESULTS_DIR


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, results_dir: Path) -> Iterator[Server]:
    problem = layer_server_problem()
    if problem:
        pytest.fail(f"The end-to-end tests need {problem}", pytrace=False)
    server = Server(tmp_path_factory.mktemp("e2e-server"), results_dir / "server.log")
    server.migrate()
    server.start()
    chat.mailbox = server.mailbox
    yield server
    server.stop()


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"No Chromium at {CHROMIUM}: install Debian's (apt-get install chromium) or set "
            "CHROMIUM_PATH. (These tests never download a browser.)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def axe_core() -> Path:
    """axe-core's browser build, from the npm registry's package (package.json pins it)."""
    if not AXE_CORE.is_file():
        pytest.fail(
            f"No axe-core at {AXE_CORE}: run `npm ci` in the project (package.json pins "
            "axe-core), or set AXE_CORE_PATH to an axe.min.js.",
            pytrace=False,
        )
    return AXE_CORE


failed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Remember a failure, so that the test's teardown keeps its pages' HTML and console."""
    report = yield
    if report.failed:
        item.stash[failed_key] = True
    return report


class Browsing:
    """Browser contexts (one per visitor) and their pages, recorded for the test's artifacts."""

    def __init__(self, browser: Browser, server: Server) -> None:
        self.browser = browser
        self.server = server
        self.contexts: list[BrowserContext] = []
        self.pages: list[Page] = []
        self.consoles: dict[Page, list[str]] = {}
        self.errors: dict[Page, list[str]] = {}
        self.requests: list[str] = []

    def visitor(self, **options) -> BrowserContext:
        """A new browser profile: its own cookies, so its own session.

        Options go to Playwright's new_context (viewport, color_scheme, ...).
        """
        options = {"viewport": VIEWPORT, **options}
        context = self.browser.new_context(base_url=self.server.url, **options)
        context.set_default_timeout(10_000)
        context.on("page", self._watch)
        context.on("request", lambda request: self.requests.append(request.url))
        self.contexts.append(context)
        return context

    def page(self, context: BrowserContext | None = None) -> Page:
        """A new tab, in a new visitor's context unless one is given."""
        return (context or self.visitor()).new_page()

    def _watch(self, page: Page) -> None:
        self.pages.append(page)
        console = self.consoles[page] = []
        errors = self.errors[page] = []
        page.on("console", lambda message: console.append(f"[{message.type}] {message.text}"))
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("pageerror", lambda error: console.append(f"[pageerror] {error}"))

    def page_errors(self) -> list[str]:
        return [error for errors in self.errors.values() for error in errors]

    def console_messages(self) -> list[str]:
        return [line for lines in self.consoles.values() for line in lines]

    def save(self, name: str, failed: bool) -> None:
        for number, page in enumerate(self.pages, start=1):
            stem = name if len(self.pages) == 1 else f"{name}-{number}"
            if page.is_closed():
                continue
            try:
                page.screenshot(path=RESULTS_DIR / f"{stem}.png", animations="disabled")
                if failed:
                    (RESULTS_DIR / f"{stem}.html").write_text(page.content())
            except Exception as error:  # noqa: BLE001 (artifacts must not hide the failure)
                (RESULTS_DIR / f"{stem}.error.txt").write_text(repr(error))
            if failed:
                (RESULTS_DIR / f"{stem}.console.log").write_text(
                    "\n".join(self.consoles[page]) + "\n"
                )

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def browsing(
    request: pytest.FixtureRequest, browser: Browser, server: Server, results_dir: Path
) -> Iterator[Browsing]:
    browsing = Browsing(browser, server)
    yield browsing
    failed = request.node.stash.get(failed_key, False)
    # Whatever a test checks, the page must not have thrown or broken its own CSP.
    problems = browsing.page_errors() + [
        line for line in browsing.console_messages() if "Content Security Policy" in line
    ]
    browsing.save(request.node.name, failed=failed or bool(problems))
    browsing.close()
    if problems and not failed:
        pytest.fail("The page reported errors:\n" + "\n".join(problems), pytrace=False)
