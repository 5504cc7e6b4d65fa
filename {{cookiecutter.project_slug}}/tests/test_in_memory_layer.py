"""The in-memory channel layer (chat/layers.py): expiry still happens, once a second at most."""

from types import SimpleNamespace

import pytest
from django.conf import settings

from chat import layers


class Clock:
    """Wall and monotonic time that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    # The stock layer stamps messages and memberships with time.time().
    monkeypatch.setattr("channels.layers.time", SimpleNamespace(time=clock))
    monkeypatch.setattr(layers.InMemoryChannelLayer, "clock", staticmethod(clock))
    return clock


def test_the_project_uses_this_layer():
    assert settings.CHANNEL_LAYERS["default"]["BACKEND"] == "chat.layers.InMemoryChannelLayer"


async def test_an_expired_message_is_dropped_and_its_channel_leaves_its_groups(clock):
    layer = layers.InMemoryChannelLayer(expiry=5)
    await layer.group_add("chat", "gone.inmemory!a")
    await layer.group_add("chat", "here.inmemory!b")
    await layer.send("gone.inmemory!a", {"type": "never.read"})

    clock.now += 6
    await layer.group_send("other", {"type": "anything"})  # any call may clean

    assert "gone.inmemory!a" not in layer.channels
    assert list(layer.groups["chat"]) == ["here.inmemory!b"]


async def test_a_membership_past_group_expiry_ends(clock):
    layer = layers.InMemoryChannelLayer(group_expiry=60)
    await layer.group_add("chat", "old.inmemory!a")
    clock.now += 30
    await layer.group_add("chat", "new.inmemory!b")

    clock.now += 31
    await layer.group_send("chat", {"type": "hello"})

    assert list(layer.groups["chat"]) == ["new.inmemory!b"]
    assert await layer.receive("new.inmemory!b") == {"type": "hello"}
    assert "old.inmemory!a" not in layer.channels  # sent nothing: no longer a member


async def test_expiry_is_checked_once_a_second_not_on_every_call(clock):
    layer = layers.InMemoryChannelLayer(expiry=5)
    await layer.send("gone.inmemory!a", {"type": "never.read"})
    clock.now += 4.5
    await layer.group_send("chat", {"type": "anything"})  # walks: nothing expired yet

    clock.now += 0.9  # expired now, but the last walk was under a second ago
    for _ in range(100):
        await layer.group_send("chat", {"type": "anything"})
    assert "gone.inmemory!a" in layer.channels

    clock.now += 0.1  # a second after the last walk
    await layer.group_send("chat", {"type": "anything"})
    assert "gone.inmemory!a" not in layer.channels


async def test_messages_not_yet_expired_are_delivered(clock):
    layer = layers.InMemoryChannelLayer(expiry=5)
    await layer.group_add("chat", "here.inmemory!b")
    await layer.group_send("chat", {"type": "first"})
    clock.now += 4
    await layer.group_send("chat", {"type": "second"})

    assert await layer.receive("here.inmemory!b") == {"type": "first"}
    assert await layer.receive("here.inmemory!b") == {"type": "second"}
