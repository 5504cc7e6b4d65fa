{%- if cookiecutter.channel_layer == "redis" -%}
"""The channel layer: channels_redis' pub/sub layer, with a channel deleted when its owner ends.

Channels has no call that undoes ``new_channel()``. The pub/sub layer unsubscribes a channel
only when a ``receive()`` on it is cancelled (channels_redis/pubsub.py says so), and a
connection that ends right after a layer message reached it has no receive left to cancel
(channels.utils.await_many_dispatch): of 500 sockets opened and closed at once, 451 stayed
subscribed in Redis, and queued in this process, for as long as the process lived
(tests/test_layers.py). ``delete_channel()`` is that missing call.

Both methods use channels_redis internals (``_get_layer``, ``_subscribe_to_channel``,
``_get_shard``); uv.lock pins the version they were written for, and the tests fail if an
upgrade changes them.
"""

import uuid

from channels_redis import pubsub  # type: ignore[import-untyped]


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    async def new_channel(self, prefix: str = "specific.") -> str:
        """A new channel of this process, as channels_redis makes one; if Redis cannot be
        reached (its ConnectionError or OSError is raised), nothing of it is kept."""
        layer = self._get_layer()
        channel = f"{layer.prefix}{prefix}{uuid.uuid4().hex}"
        try:
            await layer._subscribe_to_channel(channel)
        except BaseException:
            layer.channels.pop(channel, None)
            raise
        return channel

    async def delete_channel(self, channel: str) -> None:
        """Forget a channel of this process and unsubscribe it; a no-op for one already gone.

        Leave its groups first (``group_discard``). Raises what Redis raises if it cannot be
        reached; the channel is forgotten here all the same.
        """
        layer = self._get_layer()
        if layer.channels.pop(channel, None) is not None:
            await layer._get_shard(channel).unsubscribe(channel)
{%- else -%}
"""Channels' in-memory layer, with its expiry housekeeping run at most once a second, and a
channel deleted when its owner ends.

Channels' InMemoryChannelLayer drops expired messages and group memberships by walking every
channel and every group on each ``receive`` and ``group_send``: with a thousand open sockets
that walk was a third of the event loop's time (bench/README.md). Expiry is housekeeping,
measured in seconds (a message lives ``expiry`` = 60 s, a membership ``group_expiry`` = a
day) and nothing waits on it, so doing it once a second keeps its meaning at a cost that no
longer grows with every message.
"""

import time

from channels import layers


class InMemoryChannelLayer(layers.InMemoryChannelLayer):
    CLEAN_INTERVAL = 1.0  # seconds between two walks at most

    clock = staticmethod(time.monotonic)  # replaced by tests that play with time

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.next_clean = 0.0

    def _clean_expired(self) -> None:
        """What the stock layer does on every call, done when a second has passed."""
        now = self.clock()
        if now < self.next_clean:
            return
        self.next_clean = now + self.CLEAN_INTERVAL
        super()._clean_expired()

    async def delete_channel(self, channel: str) -> None:
        """Drop what is still queued for a channel whose owner has ended (messages that
        reached it after its last receive); a no-op for one already gone.

        Channels has no call that undoes ``new_channel()``: without this, such messages wait
        for the layer's expiry.
        """
        self.channels.pop(channel, None)
{%- endif %}
