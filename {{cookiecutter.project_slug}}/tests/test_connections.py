"""PostgreSQL connections: many replies at once stay within Django's pool, and a database
failure at either end of a turn leaves the chat usable.

PostgreSQL only (sessions are counted in pg_stat_activity):
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/chat uv run pytest -m postgres -s
Sessions are watched, and rows locked, from connections of the tests' own, outside the pool
(config/settings.py, DATABASES), so they are never counted as the app's.
"""

import asyncio
import json
import threading
import time
from collections import Counter
from contextlib import contextmanager

import psycopg
import pytest
from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection
from psycopg import sql

from chat import services
from chat.checkpoints import checkpoints
from chat.llm.demo import DemoModel
from chat.models import Conversation, Message

from .conftest import FINISHED, final_status, read_reply, replies_ended

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="counts PostgreSQL sessions"),
]

NOTICE = 'class="composer-status error" role="alert"'
REPLIES = 200


def outside_connection(autocommit: bool = True) -> psycopg.Connection:
    """A session on the test database that is not taken from Django's pool."""
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"] or None,
        password=db["PASSWORD"] or None,
        host=db["HOST"] or None,
        port=db["PORT"] or None,
        autocommit=autocommit,
    )


class Sessions:
    """The test database's sessions, as pg_stat_activity lists them."""

    def __init__(self) -> None:
        self.watcher = outside_connection()
        self.outsiders = {self.watcher.info.backend_pid}

    def streaming(self) -> int:
        """Replies stored as streaming (read outside the pool, which lends nothing for it)."""
        table = sql.Identifier(Message._meta.db_table)
        query = sql.SQL("SELECT count(*) FROM {} WHERE status = %s").format(table)
        return self.watcher.execute(query, [Message.Status.STREAMING]).fetchone()[0]

    def count(self) -> int:
        """Sessions of the app (its pool): client backends, the tests' own left out."""
        return self.watcher.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND NOT pid = ANY(%s)",
            [list(self.outsiders)],
        ).fetchone()[0]

    @contextmanager
    def sampled(self):
        """count() again and again while the block runs; yields the list the samples go to."""
        samples = [self.count()]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.01):
                samples.append(self.count())

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            yield samples
        finally:
            done.set()
            sampler.join()
            samples.append(self.count())

    @contextmanager
    def row_locked(self, row: Conversation | Message):
        """Another session holds this row until the block ends; yields that session."""
        holder = outside_connection(autocommit=False)
        self.outsiders.add(holder.info.backend_pid)
        try:
            table = sql.Identifier(row._meta.db_table)
            lock = sql.SQL("SELECT 1 FROM {} WHERE id = %s FOR UPDATE").format(table)
            holder.execute(lock, [row.pk])
            yield holder
        finally:
            holder.rollback()
            holder.close()

    def blocked_by(self, holder: psycopg.Connection, besides: set[int]) -> int:
        """The pid of a session waiting for a lock the holder has, other than those besides."""
        # Generous: a reply streams and renders first, on a machine that may be busy.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = self.watcher.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE %s = ANY(pg_blocking_pids(pid)) AND NOT pid = ANY(%s)",
                [holder.info.backend_pid, list(besides)],
            ).fetchone()
            if waiting:
                return waiting[0]
            time.sleep(0.01)
        pytest.fail("no session came to wait for the locked row")

    def terminate(self, pid: int) -> None:
        """End a session as a server restart or an administrator would."""
        self.watcher.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture
def sessions():
    sessions = Sessions()
    yield sessions
    sessions.watcher.close()


class HeldDemoModel(DemoModel):
    """The demo model, holding every reply before its first token until release().

    all_started is set once `expected` replies wait there: each has stored its turn, read its
    history and given its connection back (chat/consumers.py).
    """

    def __init__(self, expected: int) -> None:
        super().__init__(delay=0.001)
        self.expected = expected
        self.waiting = 0
        self.count_lock = threading.Lock()
        self.all_started = threading.Event()
{%- if cookiecutter.consumer == "async" %}
        self.gate = asyncio.Event()

    async def stream(self, system, messages):
        self.arrived()
        await self.gate.wait()
        async for token in super().stream(system, messages):
            yield token
{%- else %}
        self.gate = threading.Event()

    def pieces(self, messages):
        self.arrived()
        self.gate.wait()
        yield from super().pieces(messages)
{%- endif %}

    def arrived(self) -> None:
        with self.count_lock:
            self.waiting += 1
            if self.waiting == self.expected:
                self.all_started.set()

    def release(self) -> None:
        self.gate.set()


@pytest.fixture
def held_model(monkeypatch):
    """Install a HeldDemoModel as the chat's model: held_model(expected=1)."""
    installed: list[HeldDemoModel] = []

    def install(expected: int = 1) -> HeldDemoModel:
        model = HeldDemoModel(expected)
        monkeypatch.setattr("chat.consumers.get_chat_model", lambda: model)
        installed.append(model)
        return model

    yield install
    for model in installed:  # a failed test leaves no reply waiting forever
        model.release()


async def frames_sent(socket) -> list[str]:
    """The frames the socket has been sent and not yet read."""
    frames = []
    while not await socket.receive_nothing(timeout=0):
        frames.append(await socket.receive_from())
    return frames


def make_chats(count: int) -> list[tuple]:
    users = get_user_model().objects
    chats = []
    for number in range(count):
        user = users.create_user(f"user{number}", password="a-long-test-password")
        chats.append((user, Conversation.objects.create(owner=user)))
    return chats


async def test_200_replies_at_once_hold_no_more_connections_than_the_pool(
    connect, held_model, sessions
):
    pool_size = connection.settings_dict["OPTIONS"]["pool"]["max_size"]
    chats = await database_sync_to_async(make_chats)(REPLIES)
    sockets = [await connect(user, conversation.pk) for user, conversation in chats]
    assert all(socket.accepted for socket in sockets)
{%- if cookiecutter.consumer == "sync" %}
    # Held all at once, each in a thread of its own: CHAT_REPLY_THREADS (200) allows it.
{%- endif %}
    model = held_model(expected=REPLIES)

    with sessions.sampled() as samples:
        await asyncio.gather(
            *(socket.send_to(json.dumps({"message": "Hello"})) for socket in sockets)
        )
        # Generous: 200 turns are stored and 200 histories read, on a machine that may be busy.
        started = await asyncio.to_thread(model.all_started.wait, 120)
        assert started, f"{model.waiting} of {REPLIES} replies reached the model"
        streaming = sessions.streaming()
        stats = connection.pool.get_stats()
        lent = stats["pool_size"] - stats["pool_available"]
        while_streaming = sessions.count()
        model.release()
        # Generous: 200 replies end at once, and store their end through the pool.
        replies = await asyncio.gather(*(read_reply(socket, wait=60) for socket in sockets))
    after = sessions.count()
    stored = Message.objects.filter(role=Message.Role.ASSISTANT).values_list("status", flat=True)
    statuses = Counter([status async for status in stored])
    errors = sum(NOTICE in frame for frames in replies for frame in frames)
    print(
        f"\n{REPLIES} replies at once, pool of {pool_size}: {streaming} streaming together "
        f"on {lent} lent connections; sessions: {while_streaming} then, peak {max(samples)} "
        f"({len(samples)} samples), {after} after; errors {errors}"
    )

    assert streaming == REPLIES
    # No reply keeps a connection while it streams: 200 replies, at most 4 lent, in the
    # moment they work: the consumers' shared thread's, the checkpoint writer's
    # (chat/checkpoints.py), the test's own, and one the pool may still be opening
    # (psycopg_pool counts it in pool_size from the moment it starts to grow).
    assert lent <= 4
    assert errors == 0
    assert Counter(final_status(frames) for frames in replies) == {"complete": REPLIES}
    assert statuses == {"complete": REPLIES}
    # The pool lends the tests' own connections too: nothing beyond it is allowed.
    assert max(samples) <= pool_size
    assert after <= pool_size


async def test_a_connection_lost_while_a_turn_starts_is_explained_and_stores_nothing(
    user, conversation, connect, sessions
):
    socket = await connect(user, conversation.pk)
    with sessions.row_locked(conversation) as holder:
        await socket.send_to(json.dumps({"message": "Hello"}))
        starter = await asyncio.to_thread(sessions.blocked_by, holder, set())
        sessions.terminate(starter)  # the connection storing the turn is lost under it
        notice = await socket.receive_from(timeout=10)

    assert NOTICE in notice and services.NOT_SAVED in notice
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == ""
    # The socket stayed open: the same message goes through now.
    await socket.send_to(json.dumps({"message": "Hello"}))
    assert final_status(await read_reply(socket)) == "complete"
    stored = [m.role async for m in Message.objects.filter(conversation=conversation)]
    assert stored == ["user", "assistant"]


async def reply_held_at_its_first_token(user, conversation, connect, held_model):
    """Ask over a socket; the socket, the held model and the stored reply once it streams."""
    model = held_model()
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "Hello"}))
    assert await asyncio.to_thread(model.all_started.wait, 30)
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    return socket, model, reply


@pytest.fixture
def no_checkpoints(monkeypatch):
    """The checkpoint writer (chat/checkpoints.py) leaves replies alone: it would wait on a
    locked reply's row too, where these tests expect only the write of the reply's end."""
    monkeypatch.setattr(checkpoints, "write", lambda: 0)


async def test_a_connection_lost_while_a_reply_ends_is_replaced_and_the_end_stored(
    user, conversation, connect, held_model, sessions, no_checkpoints
):
    socket, model, reply = await reply_held_at_its_first_token(
        user, conversation, connect, held_model
    )

    with sessions.row_locked(reply) as holder:
        model.release()
        writer = await asyncio.to_thread(sessions.blocked_by, holder, set())
        sessions.terminate(writer)  # the connection storing the end is lost under the write
        await asyncio.to_thread(sessions.blocked_by, holder, {writer})  # written again
    frames = await read_reply(socket)

    assert final_status(frames) == "complete"
    await reply.arefresh_from_db()
    assert reply.status == Message.Status.COMPLETE and "You said: Hello" in reply.content


async def test_a_reply_whose_end_cannot_be_stored_still_ends_on_the_page(
    user, conversation, connect, held_model, sessions, no_checkpoints
):
    """finish_reply tries twice (chat/services.py); when both fail, the stored reply shows as
    interrupted once its heartbeat is old, but the page that asked must be told at once, not
    left showing a reply that streams forever; and the socket stays open."""
    socket, model, reply = await reply_held_at_its_first_token(
        user, conversation, connect, held_model
    )

    with sessions.row_locked(reply) as holder:
        model.release()
        first = await asyncio.to_thread(sessions.blocked_by, holder, set())
        sessions.terminate(first)
        second = await asyncio.to_thread(sessions.blocked_by, holder, {first})
        sessions.terminate(second)
    await replies_ended(wait=30)
    frames = await frames_sent(socket)

    assert FINISHED.search(frames[-1]), "the page still shows the reply streaming"
    assert final_status(frames) == "error"
    # The socket stayed open: it answers the next message (with a reply or a refusal).
    await socket.send_to(json.dumps({"message": "Hello again"}))
    assert await socket.receive_from(timeout=10)
