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
"""The channel layer: Channels' in-memory layer, with a channel deleted when its owner ends."""

from channels import layers


class InMemoryChannelLayer(layers.InMemoryChannelLayer):
    async def delete_channel(self, channel: str) -> None:
        """Drop what is still queued for a channel whose owner has ended (messages that
        reached it after its last receive); a no-op for one already gone.

        Channels has no call that undoes ``new_channel()``: without this, such messages wait
        for the layer's expiry (60 s by default).
        """
        self.channels.pop(channel, None)
{%- endif %}
