"""Presence costs each socket a message when it opens and when it closes, and each reply one
message per watcher, not one per pair of sockets (chat/presence.py)."""

import contextvars
import json

import pytest
from channels.layers import get_channel_layer

from chat.presence import Presence

from .conftest import FINISHED, LIVE, read_reply, read_until

pytestmark = pytest.mark.django_db(transaction=True)

SOCKETS = 30


@pytest.fixture
def presence_traffic(monkeypatch):
    """Counts presence messages sent to the layer and handled by connections."""
    counts = {"sent": 0, "handled": 0}
    layer = get_channel_layer()
    inside = contextvars.ContextVar("inside", default=False)  # a layer's group_send may send()
    for method in ("send", "group_send"):
        original = getattr(layer, method)

        async def counted(target, message, original=original):
            if not inside.get():
                counts["sent"] += message["type"] == "chat.presence"
            token = inside.set(True)
            try:
                await original(target, message)
            finally:
                inside.reset(token)

        monkeypatch.setattr(layer, method, counted)
    heard = Presence.heard

    def handled(self, event):
        counts["handled"] += 1
        heard(self, event)

    monkeypatch.setattr(Presence, "heard", handled)
    return counts


async def test_presence_grows_linearly_with_the_sockets_on_a_conversation(
    user, conversation, connect, scripted, settings, presence_traffic
):
    settings.CHAT_SOCKETS_PER_USER = SOCKETS
    settings.CHAT_FANOUT_INTERVAL = 0.05
    scripted([f"w{i} " for i in range(40)], delay=0.02)
    sockets = [await connect(user, conversation.pk) for _ in range(SOCKETS)]
    asker, watchers = sockets[0], sockets[1:]

    await asker.send_to(json.dumps({"message": "Hello, everyone"}))
    await read_reply(asker)
    for watcher in watchers:
        # Every tab knew it watched: it got the reply growing, not only its end.
        frames = await read_until(watcher, FINISHED)
        assert any(LIVE.search(frame) for frame in frames)
    for socket in [*watchers, asker]:  # the asker, still listening, hears the others go
        await socket.disconnect(timeout=5)

    # Opening and closing: one message each per socket; the reply's roll call: one message
    # to all, one answer per watcher. Every socket answering every newcomer would be
    # about SOCKETS**2 = 900 messages.
    assert presence_traffic["sent"] <= 3 * SOCKETS + 5
    assert presence_traffic["handled"] <= 3 * SOCKETS + 5
