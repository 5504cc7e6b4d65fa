"""Each abuse limit holds, says so clearly, and leaves the connection usable."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from django.db import connection, transaction

from chat import limits
from chat.llm import ProviderError
from chat.models import Conversation, Message

from .conftest import FINISHED, read_reply

pytestmark = pytest.mark.django_db(transaction=True)

NOTICE = 'id="composer-status" class="composer-status error" role="alert"'
PROJECT = Path(__file__).resolve().parent.parent


class FrozenClock:
    """Stands in for time.monotonic in chat.limits: time moves only when a test says so.

    It counts its readings: one per connection opened and one per frame received.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        return self.now

    async def wait_for_readings(self, count: int) -> None:
        async with asyncio.timeout(10):
            # Polled: a sync consumer reads the clock in its own thread, not this loop's.
            while self.readings < count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)


@pytest.fixture
def clock(monkeypatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(limits, "monotonic", frozen)
    return frozen


async def test_a_frame_over_the_size_limit_is_refused_before_parsing(
    user, conversation, connect, settings
):
    settings.CHAT_MAX_FRAME_BYTES = 1024
    socket = await connect(user, conversation.pk)
    await socket.send_to("[" * 2000)  # would be a RecursionError if parsed
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "too large; the limit is 1024 bytes" in notice
    await socket.send_to(json.dumps({"message": "still here"}))
    assert FINISHED.search((await read_reply(socket))[-1])


async def test_frames_past_the_per_second_limit_get_one_notice_then_are_dropped(
    user, conversation, connect, settings, clock
):
    settings.CHAT_FRAMES_PER_SECOND = 2  # bursts of 4
    socket = await connect(user, conversation.pk)
    for _ in range(6):
        await socket.send_to("not json")

    answers = [await socket.receive_from(timeout=5) for _ in range(5)]
    assert all("not valid JSON" in answer for answer in answers[:4])
    assert "faster than 2 frames a second" in answers[4]

    await clock.wait_for_readings(1 + 6)  # the sixth frame was received, and not answered
    clock.now += 0.5  # one frame's worth of time: the connection is usable again
    await socket.send_to(json.dumps({"message": "after the burst"}))
    frames = await read_reply(socket)
    assert "after the burst" in frames[0]  # the sixth frame got no answer at all
    assert await Message.objects.filter(role="user").acount() == 1


async def test_sockets_past_the_per_user_limit_are_told_why_and_closed(
    user, conversation, connect, settings
):
    settings.CHAT_SOCKETS_PER_USER = 2
    first = await connect(user, conversation.pk)
    second = await connect(user, conversation.pk)
    third = await connect(user, conversation.pk)

    assert first.accepted and second.accepted and third.accepted
    notice = await third.receive_from(timeout=5)
    assert NOTICE in notice and "2 chat connections open, the most allowed" in notice
    assert await third.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": limits.CLOSE_OVER_LIMIT,
    }

    await first.disconnect(timeout=5)  # a closed socket frees its place
    fourth = await connect(user, conversation.pk)
    await fourth.send_to(json.dumps({"message": "room again"}))
    assert FINISHED.search((await read_reply(fourth))[-1])


async def test_retries_count_toward_the_rate_limit(user, conversation, connect, scripted, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 3
    model = scripted(["no"], fail=ProviderError("The model provider broke off the reply."))
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "one"}))
    await read_reply(socket)
    for _ in range(2):
        await socket.send_to(json.dumps({"action": "retry"}))
        await read_reply(socket)

    await socket.send_to(json.dumps({"action": "retry"}))
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "3 messages a minute (retries count too)" in notice
    assert len(model.calls) == 3


# Asks for replies in a loop, as a busy server process would, once told to go.
RACER = textwrap.dedent(
    """
    import sys
    import django

    django.setup()
    from chat import services
    from chat.models import Conversation, Message

    conversation = Conversation.objects.get(pk=int(sys.argv[1]))
    print("ready", flush=True)
    sys.stdin.readline()
    accepted = 0
    for _ in range(int(sys.argv[2])):
        try:
            _, reply = services.start_turn(conversation, "race")
        except services.Refused:
            continue
        accepted += 1
        services.finish_reply(reply, "done", Message.Status.COMPLETE)
    print("accepted", accepted, flush=True)
    """
)


def database_url() -> str:
    """The test database, as a URL another process can open."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    user = db["USER"] or "postgres"
    return f"postgres://{user}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.mark.postgres
def test_the_rate_limit_holds_across_conversations_and_processes(user):
    limit, attempts = 6, 10
    conversations = [Conversation.objects.create(owner=user) for _ in range(2)]
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DJANGO_SECRET_KEY": django_settings.SECRET_KEY,
        "DATABASE_URL": database_url(),
        "CHAT_MESSAGES_PER_MINUTE": str(limit),
    }
    racers = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, "-c", RACER, str(conversation.pk), str(attempts)],
            cwd=PROJECT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for conversation in conversations
    ]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:  # both start at once
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
    accepted = [int(output.split()[-1]) for output in outputs]

    assert sum(accepted) == limit, accepted
    assert Message.objects.filter(role="assistant").count() == limit


def blocked_on_a_lock() -> bool:
    """Whether another session of this PostgreSQL database waits for a row lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.postgres
def test_two_connections_cannot_both_take_the_last_reply_of_the_minute(user, settings):
    """The count and the insert are one step per user: the second waits for the first.

    On PostgreSQL the second connection is caught between the first's count and its insert
    (it is seen waiting for the user's row lock, or past its own count); SQLite's IMMEDIATE
    transactions let only one writer in at a time.
    """
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    conversation = Conversation.objects.create(owner=user)
    first_counted, let_first_insert, second_counted = (threading.Event() for _ in range(3))
    refusals: dict[str, str | None] = {}

    def ask(name: str, counted: threading.Event, before_insert: threading.Event | None):
        try:
            with transaction.atomic():
                refusals[name] = limits.reply_rate_refusal(user)
                counted.set()
                if before_insert:
                    before_insert.wait(timeout=30)
                if refusals[name] is None:
                    conversation.messages.create(role=Message.Role.ASSISTANT)
        finally:
            counted.set()
            connection.close()

    first = threading.Thread(target=ask, args=("first", first_counted, let_first_insert))
    second = threading.Thread(target=ask, args=("second", second_counted, None))
    first.start()
    assert first_counted.wait(timeout=30)
    second.start()
    if connection.vendor == "postgresql":
        deadline = time.monotonic() + 30
        while not (second_counted.is_set() or blocked_on_a_lock()):
            assert time.monotonic() < deadline, "the second connection never got going"
            time.sleep(0.01)
    let_first_insert.set()
    first.join(timeout=30)
    second.join(timeout=30)

    assert refusals["first"] is None
    assert refusals["second"] and "1 messages a minute" in refusals["second"]
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 1
