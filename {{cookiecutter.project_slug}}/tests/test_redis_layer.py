"""Across processes, through the real Redis: another server process is played by a second layer."""

import asyncio
import copy
import json
import re
from urllib.parse import urlsplit

import pytest
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from chat.models import Message

from .conftest import (
    FINISHED,
    LIVE,
    final_status,
    live_text,
    read_reply,
    read_until,
)

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
    assert settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] == settings.REDIS_URL


async def test_a_connection_in_another_process_sees_the_whole_reply(
    user, conversation, connect, scripted, other_process
):
    scripted([f"p{i} " for i in range(15)], delay=0.03)
    socket = await connect(user, conversation.pk)
    channel = await watch(other_process, conversation)
    # The connection answers our announcement: it knows someone else watches.
    async with asyncio.timeout(5):
        while (await other_process.receive(channel))["event"] != "here":
            pass

    await socket.send_to(json.dumps({"message": "across processes"}))
    await read_reply(socket)
    events = await receive_until_finished(other_process, channel)
    seen = "".join(e.get("html", "") for e in events)

    assert "across processes" in seen
    assert LIVE.search(seen)
    assert "p14" in events[-1]["html"]


async def test_stop_from_another_process_stops_the_reply(
    user, conversation, connect, scripted, other_process
):
    model = scripted([f"w{i} " for i in range(500)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "write forever"}))
    await read_until(socket, LIVE)

    await other_process.group_send(
        conversation.group_name, {"type": "chat.stop", "sender": "elsewhere"}
    )

    assert final_status(await read_reply(socket)) == "stopped"
    assert await asyncio.to_thread(model.closed.wait, 5)


class RedisLink:
    """A TCP relay to the real Redis that a test can cut and restore: Redis going away."""

    def __init__(self, target: str):
        url = urlsplit(target)
        self.target = (url.hostname, url.port or 6379)
        self.database = url.path
        self.up = True
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.database}"

    async def relay(self, reader, writer):
        if not self.up:
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, upstream_writer}

        async def pipe(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def cut(self):
        self.up = False
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def restore(self):
        self.up = True

    async def stop(self):
        self.cut()
        self.server.close()


@pytest.fixture
async def redis_link(settings):
    """Route this test's channel layer through a RedisLink."""
    link = RedisLink(settings.REDIS_URL)
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    layers["default"]["CONFIG"]["hosts"][0]["address"] = await link.start()
    settings.CHANNEL_LAYERS = layers  # Channels builds a new layer from it
    yield link
    await link.stop()


async def test_redis_unreachable_at_connect_explains_and_lets_the_page_retry(
    user, conversation, connect, redis_link
):
    redis_link.cut()
    async with asyncio.timeout(20):  # an error, not a hang
        socket = await connect(user, conversation.pk)
        notice = await socket.receive_from()
        closed = await socket.receive_output()

    assert "cannot reach Redis" in notice
    assert closed == {"type": "websocket.close", "code": 1013}  # htmx reconnects on 1013

    redis_link.restore()
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "back again"}))
    await socket.receive_from(timeout=5)
    assert final_status(await read_reply(socket)) == "complete"


async def test_redis_going_away_mid_reply_keeps_the_reply_says_so_and_recovers(
    user, conversation, connect, scripted, redis_link, caplog
):
    scripted([f"p{i} " for i in range(40)], delay=0.02)
    asker = await connect(user, conversation.pk)
    await connect(user, conversation.pk)  # someone watching: the reply fans out
    await asyncio.sleep(0.3)
    await asker.send_to(json.dumps({"message": "keep going"}))
    await read_until(asker, LIVE)

    redis_link.cut()
    async with asyncio.timeout(30):
        frames = await read_reply(asker)

    assert final_status(frames) == "complete"
    assert live_text(frames).endswith("p39")
    assert any("Redis is unreachable" in frame for frame in frames)
    assert "Channel layer unreachable" in caplog.text
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert (reply.status, reply.content.endswith("p39 ")) == ("complete", True)

    redis_link.restore()
    again = await connect(user, conversation.pk)
    other = await connect(user, conversation.pk)
    await asyncio.sleep(0.3)
    await again.send_to(json.dumps({"message": "after the outage"}))
    await read_reply(again)
    # Fan-out works again (a publish retried across the outage may arrive first).
    await read_until(other, re.compile("after the outage"))
