"""A socket that closes at any moment leaves nothing in the channel layer (chat/layers.py).
{%- if cookiecutter.channel_layer == "redis" %}

With Redis, nothing in this process and no subscription in Redis.
{% endif %}"""

import asyncio

import pytest
{%- if cookiecutter.channel_layer == "redis" %}
import redis
{%- endif %}
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from chat import limits
from config.asgi import application

from .conftest import session_cookie

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 500
AT_ONCE = 50


async def headers_of(user) -> list[tuple[bytes, bytes]]:
    return [
        (b"host", b"localhost"),
        (b"origin", b"http://localhost"),
        (b"cookie", await sync_to_async(session_cookie)(user)),
    ]


async def test_sockets_opened_and_closed_at_once_leave_no_channel_behind(
    user, conversation, settings
):
    settings.CHAT_SOCKETS_PER_USER = AT_ONCE
    layer = get_channel_layer()
{%- if cookiecutter.channel_layer == "redis" %}
    prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]
    client = redis.Redis.from_url(settings.REDIS_URL)
    subscribed_before = len(client.pubsub_channels(f"{prefix}*"))
{%- endif %}
    channels_before = len(layer.channels)
    headers = await headers_of(user)

    async def open_and_close() -> None:
        socket = WebsocketCommunicator(application, f"/ws/chat/{conversation.pk}/", headers)
        accepted, _ = await socket.connect(timeout=30)
        assert accepted
        await socket.disconnect(timeout=30)  # returns once the consumer has ended

    for _ in range(SOCKETS // AT_ONCE):
        await asyncio.gather(*(open_and_close() for _ in range(AT_ONCE)))

    assert len(layer.channels) <= channels_before
    assert limits.open_sockets[user.pk] == 0
{%- if cookiecutter.channel_layer == "redis" %}
    # Channels alone left 451 of 500 channels subscribed here (chat/layers.py).
    assert len(client.pubsub_channels(f"{prefix}*")) <= subscribed_before
    client.close()
{%- else %}
    assert not layer.groups.get(conversation.group_name)
{%- endif %}


async def test_a_client_gone_before_the_handshake_ended_leaves_nothing_behind(user, conversation):
    """The server fails to send the handshake's answer, as uvicorn does for a client that
    has already left (its ClientDisconnected is an OSError); Channels then never calls
    disconnect()."""
    layer = get_channel_layer()
    channels_before = len(layer.channels)
    scope = {
        "type": "websocket",
        "path": f"/ws/chat/{conversation.pk}/",
        "headers": await headers_of(user),
        "query_string": b"",
        "subprotocols": [],
    }
    incoming = asyncio.Queue()
    await incoming.put({"type": "websocket.connect"})
    answered = []

    async def send(message: dict) -> None:
        answered.append(message["type"])
        if message["type"] == "websocket.accept":
            raise OSError("the client has gone")

    with pytest.raises(OSError):
        await asyncio.wait_for(application(scope, incoming.get, send), timeout=30)

    assert answered == ["websocket.accept"]
    assert limits.open_sockets[user.pk] == 0  # the user's sockets are not counted one too many
    assert len(layer.channels) <= channels_before
