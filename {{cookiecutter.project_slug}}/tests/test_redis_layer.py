"""Across processes, through the real Redis: another server process is played by a second layer."""

import asyncio
import copy
import json
import os
import re
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as connect_websocket

from chat.models import Message
from chat.presence import presence_group

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
    """A tab open in another process: in the conversation's group, announced to listeners."""
    channel = await layer.new_channel()
    await layer.group_add(conversation.group_name, channel)
    await layer.group_send(
        presence_group(conversation.group_name),
        {"type": "chat.presence", "event": "joined", "sender": channel},
    )
    return channel


async def answer(layer, channel, event: dict) -> None:
    """As a tab does: a reply's writer asking who watches is told "here" (chat/presence.py)."""
    if event.get("event") == "who":
        here = {"type": "chat.presence", "event": "here", "sender": channel}
        await layer.send(event["sender"], here)


async def answer_roll_call(layer, channel) -> None:
    """Wait for a reply's writer to ask who watches, and answer."""
    async with asyncio.timeout(30):  # generous: a busy machine
        while (event := await layer.receive(channel)).get("event") != "who":
            pass
    await answer(layer, channel, event)


async def snapshot_reached(layer, channel) -> None:
    """Wait until a reply's snapshot reaches this watcher: its writer knows it watches, and
    sends it more as the reply grows."""
    async with asyncio.timeout(30):  # generous: a busy machine
        while not LIVE.search((await layer.receive(channel)).get("html", "")):
            pass


async def receive_until_finished(layer, channel) -> list[dict]:
    events = []
    while True:
        events.append(await asyncio.wait_for(layer.receive(channel), timeout=10))
        await answer(layer, channel, events[-1])
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

    await socket.send_to(json.dumps({"message": "across processes"}))
    # The reply asks who watches; the answer from the other process brings it snapshots.
    events = await receive_until_finished(other_process, channel)
    await read_reply(socket)
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
    """A TCP relay to the real Redis that a test can cut, stall and restore.

    cut(): Redis goes away (connections reset, new ones refused at once).
    stall(): Redis stops answering (a network partition): connections stay open, what
    clients send is held unanswered and counted in `held`; a client that gives up on a
    held request and closes its connection is counted in `abandoned`.
    restore(): Redis is back; connections from before are reset, so clients reconnect.
    """

    def __init__(self, target: str):
        url = urlsplit(target)
        self.target = (url.hostname, url.port or 6379)
        self.database = url.path
        self.state = "up"
        self.writers: set[asyncio.StreamWriter] = set()
        self.held = 0
        self.abandoned = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.relay, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}{self.database}"

    async def relay(self, reader, writer):
        if self.state == "cut":
            writer.close()
            return
        self.writers.add(writer)
        if self.state == "stalled":
            await self.hold(reader)
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers.add(upstream_writer)

        async def pipe(source, sink, from_client):
            try:
                while data := await source.read(65536):
                    if self.state == "stalled":
                        if from_client:
                            await self.hold(source, data)
                        return
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                if self.state != "stalled":
                    sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, True), pipe(upstream_reader, writer, False)
        )

    async def hold(self, reader, data: bytes = b""):
        """Take what a client sends and answer nothing, until it gives up."""
        try:
            while True:
                if data:
                    self.held += 1
                data = await reader.read(65536)
                if not data:
                    break
        except OSError:
            pass
        if self.state == "stalled":
            self.abandoned += 1

    def reset_connections(self):
        for writer in self.writers:
            writer.transport.abort()
        self.writers.clear()

    def cut(self):
        self.state = "cut"
        self.reset_connections()

    def stall(self):
        self.state = "stalled"

    def restore(self):
        self.state = "up"
        self.reset_connections()

    async def stop(self):
        self.cut()
        self.server.close()


@pytest.fixture
async def redis_link(settings):
    """Route this test's channel layer through a RedisLink.

    Its socket timeout is far longer than any reply here, so a send that waited on a
    stalled Redis would hold up whatever waited on it for that long.
    """
    link = RedisLink(settings.REDIS_URL)
    layers = copy.deepcopy(settings.CHANNEL_LAYERS)
    host = layers["default"]["CONFIG"]["hosts"][0]
    host["address"] = await link.start()
    host["socket_timeout"] = 60
    settings.CHANNEL_LAYERS = layers  # Channels builds a new layer from it
    yield link
    await link.stop()


async def test_redis_unreachable_at_connect_refuses_the_handshake_and_lets_the_page_retry(
    user, conversation, connect, redis_link, caplog
):
    redis_link.cut()
    queued = len(get_channel_layer().channels)
    for _ in range(3):  # the page retrying while Redis is down
        socket = await connect(user, conversation.pk)
        # Refused before the handshake: browsers see close code 1006, on which htmx's ws
        # extension reconnects (a close frame with 1013 is refused by daphne).
        assert socket.accepted is False
    assert len(get_channel_layer().channels) == queued  # nothing kept of refused ones

    refusals = [r for r in caplog.records if "refusing connections" in r.getMessage()]
    assert len(refusals) == 1, "one log line per outage, not one per attempt"

    redis_link.restore()
    socket = await connect(user, conversation.pk)
    assert socket.accepted is True
    await socket.send_to(json.dumps({"message": "back again"}))
    assert final_status(await read_reply(socket)) == "complete"
    assert "reachable again" in caplog.text


async def test_a_stalled_redis_costs_the_asking_socket_nothing_and_it_hears_of_it_once(
    user, conversation, connect, scripted, redis_link, other_process
):
    scripted([f"p{i} " for i in range(100)], delay=0.02)
    asker = await connect(user, conversation.pk)
    watcher = await watch(other_process, conversation)  # another process, through the link
    await asker.send_to(json.dumps({"message": "keep going"}))
    await answer_roll_call(other_process, watcher)
    await snapshot_reached(other_process, watcher)

    redis_link.stall()
    frames = await read_reply(asker, wait=30)

    # The whole reply reached the asker while sends to Redis were still unanswered: no
    # client had yet given up on one (they would only after 60 s).
    assert (redis_link.held > 0, redis_link.abandoned) == (True, 0)
    assert final_status(frames) == "complete"
    assert live_text(frames).endswith("p99")
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert (reply.status, reply.content.endswith("p99 ")) == ("complete", True)

    redis_link.restore()
    # The asker hears once that fan-out paused, and once that it is back; the kept end of
    # the reply goes out again then (watchers' pages also check stale replies themselves).
    notices = await read_until(asker, re.compile("are back"), wait=30)
    seen = "".join(frames + notices)
    assert seen.count("are paused") == 1
    assert seen.count("are back") == 1


async def test_redis_gone_mid_reply_keeps_the_reply_and_fanout_recovers(
    user, conversation, connect, scripted, redis_link, other_process, caplog
):
    scripted([f"p{i} " for i in range(100)], delay=0.02)
    asker = await connect(user, conversation.pk)
    watcher = await watch(other_process, conversation)  # another process, through the link
    await asker.send_to(json.dumps({"message": "keep going"}))
    await answer_roll_call(other_process, watcher)
    await snapshot_reached(other_process, watcher)

    redis_link.cut()
    frames = await read_reply(asker, wait=30)

    assert final_status(frames) == "complete"
    assert live_text(frames).endswith("p99")
    assert "Channel layer unreachable" in caplog.text

    redis_link.restore()
    # Once the asker's fan-out is back, a connection opened now gets the conversation's
    # updates again. (One opened at the very moment Redis comes back may miss what is sent
    # while the layer's subscriber reconnects: pub/sub keeps nothing.)
    await read_until(asker, re.compile("are back"), wait=30)
    watching = await connect(user, conversation.pk)
    await asker.send_to(json.dumps({"message": "after the outage"}))
    await read_reply(asker, wait=30)
    await read_until(watching, re.compile("after the outage"), wait=30)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


SERVERS = {
    "uvicorn": ["-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port"],
    # What `manage.py devserver` runs after migrating: daphne's runserver.
    "daphne": ["manage.py", "runserver", "--noreload", "--skip-checks"],
}


@pytest.mark.parametrize("server", SERVERS)
def test_under_each_server_redis_down_at_connect_refuses_the_handshake_quietly(server, tmp_path):
    port = free_port()
    command = [sys.executable, *SERVERS[server]]
    command.append(str(port) if server == "uvicorn" else f"127.0.0.1:{port}")
    env = {
        **os.environ,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "DJANGO_DEBUG": "true",
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
        "PYTHONUNBUFFERED": "1",
    }
    log = tmp_path / "server.log"
    with log.open("w") as output:
        process = subprocess.Popen(  # noqa: S603
            command, env=env, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 120  # generous: a busy machine starts Django slowly
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"{server} did not start:\n{log.read_text()}"
                time.sleep(0.2)
        for _ in range(3):  # the page retrying
            url = f"ws://127.0.0.1:{port}/ws/chat/1/"
            with pytest.raises(InvalidStatus) as refused:
                connect_websocket(url, origin=f"http://127.0.0.1:{port}", open_timeout=60)
            # Browsers report a refused handshake as 1006: htmx's ws extension reconnects.
            assert refused.value.response.status_code == 403
    finally:
        process.terminate()
        process.wait(timeout=60)
    output = log.read_text()
    assert output.count("Channel layer unreachable, refusing connections") == 1, output
    assert "Traceback" not in output, output
    assert "invalid close code" not in output, output
