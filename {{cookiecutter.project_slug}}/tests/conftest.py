import asyncio
import html
import json
import re
import threading
import time
{%- if cookiecutter.channel_layer == "redis" %}
import uuid
{%- endif %}
from collections.abc import Callable
from socket import create_server

import pytest
{%- if cookiecutter.channel_layer == "redis" %}
import redis
{%- endif %}
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import close_old_connections, connections
from django.test import Client

from chat import consumers
from chat.llm import ChatMessage, ProviderError
from chat.models import Conversation, Message
from config.asgi import application

# A frame of a streaming reply: the reply so far, rendered as Markdown (fragments.live_for).
LIVE = re.compile(r'<div id="message-\d+-text" hx-swap-oob="innerHTML">')
LIVE_FRAME = re.compile(r'^<div id="message-\d+-text" hx-swap-oob="innerHTML">(.*)</div>$', re.S)
FINISHED = re.compile(r'<article id="message-(\d+)" class="message assistant (\w+)" hx-swap-oob')
{%- if cookiecutter.channel_layer == "redis" %}


def pytest_configure(config):
    # Pub/sub channels are shared by every client of a Redis server, whatever the database
    # number: a prefix of this run's own keeps parallel runs from hearing each other.
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True, scope="session")
def redis_is_up():
    """The Redis variant is tested against a real Redis: unreachable is a failure, not a skip."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as error:
        pytest.fail(f"Redis at REDIS_URL={settings.REDIS_URL} is unreachable: {error}")
    finally:
        client.close()
{%- endif %}


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def own_cache(settings):
    """Account rate limits count in the cache: each test starts with an empty one of its own."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


@pytest.fixture(autouse=True)
def connections_given_back(monkeypatch):
    """database_sync_to_async gives its thread's connection back after each call, as under a
    server. Channels' test communicator turns that off while a test sends or waits for frames
    (channels/testing/application.py: channels.db.close_old_connections becomes no_op), so
    that a TestCase's transaction survives; these tests commit for real."""
    monkeypatch.setattr("channels.testing.application.no_op", close_old_connections)


@pytest.fixture(autouse=True)
async def close_async_orm_connections():
    """A test's async ORM calls run in asgiref's shared thread, whose connection outlives the
    test: close it after each one, or PostgreSQL refuses to drop the test database at the end
    ("being accessed by other users"). Connections of the app's own threads are closed by the
    app (CONN_MAX_AGE=0)."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture(autouse=True)
def quick_demo_model(settings):
    settings.LLM_API_KEY = ""
    settings.LLM_BASE_URL = None
    settings.DEMO_MODEL_DELAY = 0.001


class ScriptedModel:
    """A model whose reply, pace and failure a test decides; it records what it was given."""

    label = "Scripted model"
    is_demo = False

    def __init__(
        self,
        pieces: list[str],
        delay: float = 0.0,
        fail: ProviderError | None = None,
        on_start: Callable[[], object] = lambda: None,
    ):
        self.pieces = pieces
        self.delay = delay
        self.fail = fail
        self.on_start = on_start
        self.calls: list[list[ChatMessage]] = []
        self.yielded = 0
        self.closed = threading.Event()
{%- if cookiecutter.consumer == "async" %}

    async def stream(self, system: str, messages: list[ChatMessage]):
        self.calls.append(messages)
        await sync_to_async(self.on_start)()
        try:
            for piece in self.pieces:
                await asyncio.sleep(self.delay)
                self.yielded += 1
                yield piece
            if self.fail:
                raise self.fail
        finally:
            self.closed.set()
{%- else %}

    def stream(self, system: str, messages: list[ChatMessage]):
        self.calls.append(messages)
        self.on_start()
        try:
            for piece in self.pieces:
                time.sleep(self.delay)
                self.yielded += 1
                yield piece
            if self.fail:
                raise self.fail
        finally:
            self.closed.set()
{%- endif %}


@pytest.fixture
def scripted(monkeypatch):
    """Install a ScriptedModel as the chat's model: scripted(["Hel", "lo"], delay=0.01)."""

    def install(pieces: list[str], **options) -> ScriptedModel:
        model = ScriptedModel(pieces, **options)
        monkeypatch.setattr("chat.consumers.get_chat_model", lambda: model)
        return model

    return install


@pytest.fixture
def make_user(transactional_db):
    def make(username: str = "alice"):
        return get_user_model().objects.create_user(username, password="a-long-test-password")

    return make


@pytest.fixture
def user(make_user):
    return make_user("alice")


@pytest.fixture
def conversation(user):
    return Conversation.objects.create(owner=user)


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


@pytest.fixture
async def connect():
    """Open real sockets through the whole ASGI stack; all are closed after the test."""
    opened: list[WebsocketCommunicator] = []

    async def open_socket(
        user, conversation_id, origin: bytes | None = b"http://localhost", client=None
    ):
        """client: a django.test.Client whose session the socket shares (else a new one)."""
        headers = [(b"host", b"localhost")]
        if origin is not None:
            headers.append((b"origin", origin))
        if client is not None:
            headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
        elif user is not None:
            headers.append((b"cookie", await sync_to_async(session_cookie)(user)))
        socket = WebsocketCommunicator(application, f"/ws/chat/{conversation_id}/", headers)
        socket.accepted, socket.close_code = await socket.connect(timeout=5)
        opened.append(socket)
        return socket

    yield open_socket
    for socket in opened:
        await socket.disconnect(timeout=5)
    # Replies still being written finish while this test's event loop runs: one that
    # outlived it would wait for the loop forever.
    await replies_ended(wait=20)
    # Connections the consumers opened in this loop's threads: close them, or
    # PostgreSQL refuses to drop the test database at the end of the run.
    await database_sync_to_async(connections.close_all)()


async def replies_ended(wait: float) -> None:
    """Wait, up to `wait` seconds, until the replies started in this test's event loop have
    ended, however they ended (with the sync consumer: their threads too)."""
    loop = asyncio.get_running_loop()
{%- if cookiecutter.consumer == "async" %}
    running = {task for task in consumers.replies.values() if task.get_loop() is loop}
{%- else %}
    running = {task for task in consumers.background if task.get_loop() is loop}
{%- endif %}
    if running:
        await asyncio.wait(running, timeout=wait)


async def read_until(socket: WebsocketCommunicator, pattern: re.Pattern, wait: float = 10):
    """Frames up to and including the first that matches."""
    frames = []
    while True:
        frames.append(await socket.receive_from(timeout=wait))
        if pattern.search(frames[-1]):
            return frames


async def read_reply(socket: WebsocketCommunicator, wait: float = 10) -> list[str]:
    """Frames up to and including the one that shows the reply finished."""
    frames = []
    while True:
        frame = await socket.receive_from(timeout=wait)
        frames.append(frame)
        if FINISHED.search(frame):
            return frames


async def wait_for_reply(conversation, check: Callable[[Message], bool], wait: float = 30):
    """The conversation's latest reply, once check(reply) is true (the database sends no
    events: polled every 50 ms; `wait` is a bound for a busy machine, not an expected pace)."""
    deadline = time.monotonic() + wait
    while True:
        reply = await Message.objects.filter(conversation=conversation, role="assistant").alast()
        if reply is not None and check(reply):
            return reply
        assert time.monotonic() < deadline, f"no such reply in {wait} s; the last: {reply!r}"
        await asyncio.sleep(0.05)


async def wait_for_status(conversation, status: str, wait: float = 30) -> Message:
    return await wait_for_reply(conversation, lambda reply: reply.status == status, wait)


def live_text(frames: list[str]) -> str:
    """The text the last live frame showed, as a reader sees it (tags dropped, unescaped)."""
    shown = [match.group(1) for frame in frames if (match := LIVE_FRAME.search(frame))]
    return html.unescape(re.sub(r"<[^>]+>", "", shown[-1])).strip() if shown else ""


def final_status(frames: list[str]) -> str:
    return FINISHED.search(frames[-1]).group(2)


async def reply_in_chat(model, user, conversation, connect, monkeypatch):
    """Ask through the chat socket with this model; the frames of the reply and the stored reply."""
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: model)
    chat = await connect(user, conversation.pk)
    await chat.send_to(json.dumps({"message": "Count to three"}))
    frames = await read_reply(chat)
    stored = await Message.objects.filter(conversation=conversation).alast()
    return frames, stored


class SilentProvider:
    """A loopback HTTP server that answers one request with a stream's headers and its first
    bytes, then sends nothing; it notes when the client has read them and when it hangs up."""

    def __init__(self, content_type: bytes, start: bytes = b"") -> None:
        self.content_type = content_type
        self.start = start
        self.answered = threading.Event()
        self.hung_up = threading.Event()
        self.socket = create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def __enter__(self) -> "SilentProvider":
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.socket.close()

    def serve(self) -> None:
        connection, _ = self.socket.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            headers = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
            while len(body) < int(headers.get(b"content-length", b"0")):
                body += connection.recv(65536)
            first = b"%x\r\n%s\r\n" % (len(self.start), self.start) if self.start else b""
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: " + self.content_type + b"\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + first
            )
            self.answered.set()
            if connection.recv(1) == b"":
                self.hung_up.set()


async def end_while_the_provider_is_silent(
    ending, model, provider, user, conversation, connect, monkeypatch
):
    """Ask, wait until the first piece the provider sent is on the page and the provider has gone
    quiet, then press Stop (ending="stop") or close the only page watching, with no grace for a
    tab to come back (ending="leave").

    Returns the frames the page got, the stored reply once it is no longer streaming, and the
    seconds from Stop or leaving to the reply's end.
    """
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: model)
    chat = await connect(user, conversation.pk)
    await chat.send_to(json.dumps({"message": "Count to three"}))
    frames = await read_until(chat, LIVE)
    # The page can show the first piece before the provider's thread marks it sent.
    assert await asyncio.to_thread(provider.answered.wait, 10)
    ended_at = time.monotonic()
    if ending == "stop":
        await chat.send_to(json.dumps({"action": "stop"}))
        frames += await read_reply(chat)
    else:
        monkeypatch.setattr(settings, "CHAT_RESUME_GRACE", 0)
        await chat.disconnect(timeout=5)
    await replies_ended(wait=10)  # the reply's own task (and, sync, its thread) has ended
    ended = time.monotonic() - ended_at
    stored = await Message.objects.filter(conversation=conversation).alast()
    return frames, stored, ended
