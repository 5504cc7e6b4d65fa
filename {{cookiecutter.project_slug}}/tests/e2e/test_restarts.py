"""A reply survives its server: stopped, killed or reloaded mid-reply, for real.

Each test runs a real server process (uvicorn, daphne, or `manage.py devserver` with its
auto-reloader) on a SQLite file of its own, asks over a real WebSocket for a long reply,
waits until the reply's first checkpoint is in the database, then stops the server the way
a deploy, a crash or an edit would, and reads what the database kept. No browser: these
run with the end-to-end tests (`-m e2e`) because they start servers.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .conftest import PROJECT_DIR, SERVER_START_TIMEOUT, free_port

pytestmark = pytest.mark.e2e

SETTINGS = """\
from config.settings import *  # noqa: F403

LLM_API_KEY = ""
LLM_BASE_URL = None
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
# Pages without collectstatic's manifest: these tests read pages, not static files.
STORAGES["staticfiles"] = dict(  # noqa: F405
    BACKEND="django.contrib.staticfiles.storage.StaticFilesStorage"
)
if "CONFIG" in CHANNEL_LAYERS["default"]:  # noqa: F405
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = {prefix!r}  # noqa: F405
"""
SIGN_IN = """\
from django.contrib.auth import get_user_model
from django.test import Client
from chat.models import Conversation
user = get_user_model().objects.create_user("restart", password="a-long-test-password")
client = Client()
client.force_login(user)
conversation = Conversation.objects.create(owner=user)
print(client.cookies["sessionid"].value, conversation.pk)
"""
# The demo model echoes the question: a long one makes a reply of about 500 tokens, which
# at DEMO_MODEL_DELAY streams for 25 s; every test ends it long before that.
QUESTION = "Keep talking. " * 160
WAIT = 60  # seconds, a bound for a busy machine; each step ends on an event well before


class Site:
    """One project instance: its settings, its SQLite file, a signed-in user, a server.

    Made once per module (migrate, sign in), copied for each test by ``copy()``.
    """

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.database = workdir / "db.sqlite3"
        self.port = free_port()
        self.log = workdir / "server.log"
        self.settings_file = workdir / "restart_settings.py"
        self.settings_file.write_text(SETTINGS.format(prefix=f"restart-{self.port}"))
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "restart_settings",
            "PYTHONPATH": os.pathsep.join([str(workdir), str(PROJECT_DIR)]),
            "PYTHONUNBUFFERED": "1",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECURE_SSL_REDIRECT": "false",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": f"sqlite:///{self.database}",
            "DEMO_MODEL_DELAY": "0.05",
            "CHAT_CHECKPOINT_INTERVAL": "0.2",
            "CHAT_HEARTBEAT_TIMEOUT": "2",
            "EMAIL_URL": "dummymail://",
        }
        self.process: subprocess.Popen | None = None

    def set_up(self) -> None:
        self.manage("migrate", "--no-input", "--verbosity=0")
        session, conversation = self.manage("shell", "--verbosity=0", "-c", SIGN_IN).split()[-2:]
        self.session, self.conversation = session, int(conversation)

    def copy(self, workdir: Path) -> "Site":
        site = Site(workdir)
        shutil.copyfile(self.database, site.database)
        site.session, site.conversation = self.session, self.conversation
        return site

    def manage(self, *arguments: str) -> str:
        result = subprocess.run(  # noqa: S603
            [sys.executable, "manage.py", *arguments],
            cwd=PROJECT_DIR,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def start(self, server: str) -> None:
        host, port = "127.0.0.1", str(self.port)
        command = {
            "uvicorn": ["-m", "uvicorn", "config.asgi:application", "--host", host, "--port", port],
            "daphne": ["-m", "daphne", "-b", host, "-p", port, "config.asgi:application"],
            "devserver": ["manage.py", "devserver", f"{host}:{port}"],
        }[server]
        with self.log.open("a") as log:
            self.process = subprocess.Popen(  # noqa: S603
                [sys.executable, *command],
                cwd=PROJECT_DIR,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # devserver's reloader and its child, as one group
            )
        self.wait_until_answering()

    def wait_until_answering(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server exited:\n{self.log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/accounts/login/"):  # noqa: S310
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        pytest.fail(f"the server did not answer:\n{self.log.read_text()}", pytrace=False)

    def signal(self, number: int) -> None:
        os.killpg(self.process.pid, number)

    def wait_for_exit(self) -> None:
        self.process.wait(timeout=WAIT)
        self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.signal(signal.SIGKILL)
            self.wait_for_exit()

    @contextmanager
    def asking(self, text: str) -> Iterator[None]:
        """A socket open while the body runs, which has sent this message."""
        with connect(
            f"ws://127.0.0.1:{self.port}/ws/chat/{self.conversation}/",
            origin=f"http://127.0.0.1:{self.port}",
            additional_headers={"Cookie": f"sessionid={self.session}"},
            open_timeout=WAIT,
        ) as socket:
            socket.send(json.dumps({"message": text}))
            yield

    def reply(self) -> tuple[str, str]:
        """(status, content) of the latest reply, as stored."""
        with sqlite3.connect(self.database, timeout=20) as db:
            row = db.execute(
                "SELECT status, content FROM chat_message WHERE role = 'assistant' "
                "ORDER BY id DESC LIMIT 1"
            ).fetchone()
        return row or ("", "")

    def wait_for_reply(self, check, what: str) -> tuple[str, str]:
        deadline = time.monotonic() + WAIT
        while not check(reply := self.reply()):
            assert time.monotonic() < deadline, f"no reply {what} in {WAIT} s; {reply[0]!r}"
            time.sleep(0.05)
        return reply

    def page(self) -> str:
        request = urllib.request.Request(  # noqa: S310
            f"http://127.0.0.1:{self.port}/chat/{self.conversation}/",
            headers={"Cookie": f"sessionid={self.session}"},
        )
        with urllib.request.urlopen(request) as response:  # noqa: S310
            return response.read().decode()

    def wait_for_page(self, text: str) -> str:
        deadline = time.monotonic() + WAIT
        while text not in (page := self.page()):
            assert time.monotonic() < deadline, f"no page with {text!r} in {WAIT} s"
            time.sleep(0.2)
        return page


@pytest.fixture(scope="module")
def signed_in_site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(tmp_path_factory.mktemp("restarts"))
    site.set_up()
    return site


@pytest.fixture
def site(signed_in_site: Site, tmp_path: Path) -> Iterator[Site]:
    site = signed_in_site.copy(tmp_path)
    yield site
    site.stop()


def streaming_with_text(reply: tuple[str, str]) -> bool:
    return reply[0] == "streaming" and "You said" in reply[1]


@pytest.mark.parametrize("server", ["uvicorn", "daphne"])
def test_sigterm_mid_reply_saves_the_text_so_far_as_stopped(site: Site, server: str) -> None:
    site.start(server)
    with site.asking(QUESTION):
        site.wait_for_reply(streaming_with_text, "checkpointed")

        site.signal(signal.SIGTERM)
        site.wait_for_exit()

    status, content = site.reply()
    assert status == "stopped"
    assert content.startswith("**Demo model**") and "You said" in content


def test_a_devserver_reload_mid_reply_saves_the_text_so_far_as_stopped(site: Site) -> None:
    site.start("devserver")
    with site.asking(QUESTION):
        site.wait_for_reply(streaming_with_text, "checkpointed")

        site.settings_file.touch()  # an edit: the auto-reloader restarts the server process
        status, content = site.wait_for_reply(lambda reply: reply[0] != "streaming", "saved")

    assert status == "stopped"
    assert "You said" in content


def test_a_killed_server_leaves_the_reply_interrupted_with_its_text_and_the_chat_usable(
    site: Site,
) -> None:
    site.start("uvicorn")
    with site.asking(QUESTION):
        site.wait_for_reply(streaming_with_text, "checkpointed")

        site.signal(signal.SIGKILL)  # nothing runs: only the last checkpoint is left
        site.wait_for_exit()
    status, kept = site.reply()
    assert status == "streaming" and "You said" in kept
    site.start("uvicorn")

    # Its heartbeat stops with its server: a page loaded after that shows it interrupted.
    page = site.wait_for_page("The server stopped while writing this reply")
    assert 'class="message assistant interrupted"' in page
    assert 'name="action" value="retry"' in page
    with site.asking("Hello again"):
        site.wait_for_reply(lambda reply: "You said: Hello again" in reply[1], "answering")
