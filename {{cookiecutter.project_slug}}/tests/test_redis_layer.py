"""Across processes, through the real Redis: another server process is played by a second layer."""

import asyncio
import json

import pytest
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from .conftest import CHUNK, FINISHED, SNAPSHOT, final_status, read_reply, read_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def other_process():
    layer = RedisPubSubChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])
    yield layer
    await layer.flush()


async def watch(layer, conversation) -> str:
    channel = await layer.new_channel()
    await layer.group_add(conversation.group_name, channel)
    await layer.group_send(
        conversation.group_name, {"type": "chat.presence", "event": "joined", "sender": channel}
    )
    return channel


async def receive_until_finished(layer, channel) -> list[dict]:
    events = []
    while True:
        events.append(await asyncio.wait_for(layer.receive(channel), timeout=10))
        if FINISHED.search(events[-1].get("html", "")):
            return events


def test_the_channel_layer_is_redis_at_redis_url():
    assert isinstance(get_channel_layer(), RedisPubSubChannelLayer)
    assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] == [settings.REDIS_URL]


async def test_a_connection_in_another_process_sees_the_whole_reply(
    user, conversation, connect, scripted, other_process
):
    scripted([f"p{i} " for i in range(15)], delay=0.03)
    socket = await connect(user, conversation.pk)
    channel = await watch(other_process, conversation)
    first_two = [await asyncio.wait_for(other_process.receive(channel), timeout=5) for _ in "ab"]
    # Our own announcement comes back through the group; the asking connection answers it.
    assert {(e["event"], e["sender"] == channel) for e in first_two} == {
        ("joined", True),
        ("here", False),
    }

    await socket.send_to(json.dumps({"message": "across processes"}))
    await read_reply(socket)
    events = await receive_until_finished(other_process, channel)
    seen = "".join(e.get("html", "") for e in events)

    assert "across processes" in seen
    assert SNAPSHOT.search(seen)
    assert not CHUNK.search(seen)
    assert "p14" in events[-1]["html"]


async def test_stop_from_another_process_stops_the_reply(
    user, conversation, connect, scripted, other_process
):
    model = scripted([f"w{i} " for i in range(500)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "write forever"}))
    await read_until(socket, CHUNK)

    await other_process.group_send(
        conversation.group_name, {"type": "chat.stop", "sender": "elsewhere"}
    )

    assert final_status(await read_reply(socket)) == "stopped"
    assert await asyncio.to_thread(model.closed.wait, 5)
