"""Replies that survive their server, their socket and their page; sockets that end with the
session; fan-out that outlives the layer's group expiry.

Real sockets through the whole ASGI stack, the real database (SQLite, and PostgreSQL with
`-m postgres`), the real channel layer.
"""

import asyncio
import json
from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone

from chat import services
from chat.checkpoints import Checkpoints, checkpoints
from chat.models import Message

from .conftest import (
    FINISHED,
    LIVE,
    final_status,
    read_reply,
    read_until,
    wait_for_reply,
    wait_for_status,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


def send(text: str) -> str:
    return json.dumps({"message": text})


def words(count: int) -> list[str]:
    return [f"w{i} " for i in range(count)]


async def reply_of(conversation) -> Message:
    return await Message.objects.filter(conversation=conversation, role="assistant").alatest("pk")


# Checkpoints and heartbeats


async def test_a_streaming_reply_is_written_back_as_it_grows_and_a_reload_shows_it(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.2
    model = scripted(words(2000), delay=0.01)  # 20 s: it is still streaming when read
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("write on"))
    await read_until(socket, LIVE)

    # The first write-back may come after the first word alone: wait for one with two.
    reply = await wait_for_reply(conversation, lambda reply: len(reply.content.split()) >= 2)
    assert reply.status == "streaming"
    assert reply.content.startswith("w0 w1 ")
    client = Client()
    await sync_to_async(client.force_login)(user)
    page = (await sync_to_async(client.get)(f"/chat/{conversation.pk}/")).content.decode()
    assert f'<div id="message-{reply.pk}-text" class="text markdown streaming">' in page
    assert "w0 w1" in page
    await socket.send_to(json.dumps({"action": "stop"}))
    await read_reply(socket)
    assert model.yielded < 2000


async def test_a_reply_whose_server_died_shows_interrupted_with_its_text_and_frees_the_chat(
    user, conversation, connect, scripted
):
    question = await Message.objects.acreate(conversation=conversation, role="user", content="Hi")
    dead = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming", content="Half an ans"
    )
    # Its last heartbeat was a minute ago: the process writing it is gone.
    gone = timezone.now() - timedelta(seconds=60)
    await Message.objects.filter(pk=dead.pk).aupdate(updated_at=gone)

    client = Client()
    await sync_to_async(client.force_login)(user)
    page = (await sync_to_async(client.get)(f"/chat/{conversation.pk}/")).content.decode()

    assert 'class="message assistant interrupted"' in page
    assert "Half an ans" in page and services.INTERRUPTED in page
    assert 'name="action" value="retry"' in page
    scripted(["A new answer."])
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("Again"))
    frames = await read_reply(socket)
    assert final_status(frames) == "complete"
    await dead.arefresh_from_db()
    assert (dead.status, dead.content) == ("interrupted", "Half an ans")
    assert question.pk < dead.pk


async def test_a_live_reply_stays_streaming_while_its_provider_is_silent_past_the_timeout(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_CHECKPOINT_INTERVAL = 0.1
    settings.CHAT_HEARTBEAT_TIMEOUT = 1.0
    # Nothing for 3 s, far past the heartbeat timeout: only the heartbeat says it is alive.
    model = scripted(["slow ", "answer"], delay=1.5)
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("think hard"))
    await wait_for_status(conversation, "streaming")
    seen = set()
    while not model.closed.is_set():
        await sync_to_async(services.settle)(conversation)  # what every page load runs
        seen.add((await reply_of(conversation)).status)
        await asyncio.sleep(0.1)
    frames = await read_reply(socket)

    assert seen <= {"streaming", "complete"}
    assert final_status(frames) == "complete"


def test_a_checkpoint_stores_grown_text_beats_for_every_reply_and_spares_ended_ones(
    conversation,
):
    grown, silent, ended = (
        conversation.messages.create(role="assistant", status="streaming") for _ in range(3)
    )
    long_ago = timezone.now() - timedelta(seconds=5)
    Message.objects.update(updated_at=long_ago)
    book = Checkpoints()
    # What track() records, without its background thread: this test calls write() itself.
    book.replies = {grown.pk: ["Hel", "lo"], silent.pk: [], ended.pk: ["Half"]}
    book.written = dict.fromkeys(book.replies, 0)
    Message.objects.filter(pk=ended.pk).update(status="complete", content="The end.")

    assert book.write() == 2  # the texts that grew: grown's and ended's

    for reply in (grown, silent, ended):
        reply.refresh_from_db()
    assert (grown.content, grown.status) == ("Hello", "streaming")
    assert grown.updated_at > long_ago and silent.updated_at > long_ago  # heartbeats
    assert (ended.content, ended.status) == ("The end.", "complete")  # its own end stands
    assert ended.updated_at == long_ago


async def test_at_exit_every_reply_still_streaming_is_saved_as_stopped_with_its_text(
    conversation,
):
    reply = await Message.objects.acreate(
        conversation=conversation, role="assistant", status="streaming"
    )
    checkpoints.track(reply.pk, ["Half ", "a reply"])

    saved = await sync_to_async(checkpoints.save_all)()

    await reply.arefresh_from_db()
    assert saved == 1
    assert (reply.status, reply.content) == ("stopped", "Half a reply")


# A reply outlives its socket for a grace period


async def test_a_reloaded_page_picks_up_the_reply_and_sees_it_finish(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_RESUME_GRACE = 60  # far longer than the reply: only a bug can stop it
    scripted(words(300), delay=0.01)
    first = await connect(user, conversation.pk)
    await first.send_to(send("write on"))
    await read_until(first, LIVE)

    await first.disconnect()  # the page reloads
    again = await connect(user, conversation.pk)
    frames = await read_reply(again, wait=30)

    assert final_status(frames) == "complete"
    assert any(LIVE.search(frame) for frame in frames)  # it streamed on in the new page
    reply = await reply_of(conversation)
    assert reply.content == "".join(words(300))


async def test_stop_in_a_reloaded_page_stops_the_reply_its_old_page_started(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_RESUME_GRACE = 60
    model = scripted(words(2000), delay=0.01)
    first = await connect(user, conversation.pk)
    await first.send_to(send("write on"))
    await read_until(first, LIVE)
    await first.disconnect()
    again = await connect(user, conversation.pk)
    await read_until(again, LIVE, wait=30)

    await again.send_to(json.dumps({"action": "stop"}))
    frames = await read_until(again, FINISHED, wait=30)

    assert final_status(frames) == "stopped"
    assert model.yielded < 2000
    assert (await reply_of(conversation)).status == "stopped"


# Sockets end with the session


def sign_out(client: Client, user) -> None:
    client.post("/accounts/logout/")


def change_password(client: Client, user) -> None:
    user.set_password("another-long-test-password")
    user.save()


def deactivate(client: Client, user) -> None:
    user.is_active = False
    user.save()


@pytest.mark.parametrize("ending", [sign_out, change_password, deactivate])
async def test_a_socket_open_when_the_session_ends_refuses_the_next_message(
    ending, user, conversation, connect, scripted
):
    model = scripted(["Never sent."])
    client = Client()
    await sync_to_async(client.force_login)(user)
    socket = await connect(user, conversation.pk, client=client)
    assert socket.accepted

    await sync_to_async(ending)(client, user)
    await socket.send_to(send("Spend my tokens"))

    answer = await socket.receive_from(timeout=10)
    assert "You have been signed out" in answer
    closed = await socket.receive_output(timeout=10)
    assert closed == {"type": "websocket.close", "code": 4401}
    assert model.calls == []
    assert not await Message.objects.filter(conversation=conversation).aexists()
{%- if cookiecutter.channel_layer == "in-memory" %}


# Fan-out past the layer's group expiry


async def test_a_tab_open_longer_than_the_group_expiry_still_sees_the_other_tabs_replies(
    user, conversation, connect, scripted, settings
):
    expiry = 2
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "chat.layers.InMemoryChannelLayer",
            "CONFIG": {"group_expiry": expiry},
        }
    }
    scripted(["Seen ", "by both."])
    watcher = await connect(user, conversation.pk)
    asker = await connect(user, conversation.pk)
    await asyncio.sleep(2.5 * expiry)  # the time passing is what this test is about

    await asker.send_to(send("Hello"))
    await read_reply(asker)
    frames = await read_reply(watcher)

    assert final_status(frames) == "complete"
    assert "by both." in frames[-1]
{%- endif %}
