"""A reply outlives its socket for a while, so a reloaded page picks it up where it is.

When the connection writing a reply closes (a reload, a dropped network), the reply goes on
and ``keep_reply`` listens on a channel of its own in the conversation's groups, as a
listener (chat/presence.py). A tab that opens the conversation announces itself there
("joined"); from then on the reply goes on as if nothing had happened: its snapshots and
its finished state reach that tab through the layer, and the page it loaded already showed
the text of the last checkpoint. Stop from any tab still stops it. Once nobody has watched
for ``grace`` seconds, ``stop()`` is called and the reply is saved as stopped: nobody pays
for tokens nobody reads.
"""

import asyncio
import logging
from collections.abc import Callable

from .fanout import leave_layer
from .presence import presence_group

logger = logging.getLogger(__name__)


async def keep_reply(
    layer, group: str, watchers: set[str], stop: Callable[[], None], grace: float
) -> None:
    """Run until the reply's task cancels this one, or call stop() when nobody watches.

    ``watchers`` are the channels known to watch the conversation when the socket closed.
    Returns after calling stop(); cancel it when the reply ends.
    """
    watchers = set(watchers)
    loop = asyncio.get_running_loop()
    groups = [group, presence_group(group)]
    channel = None
    try:
        channel = await layer.new_channel()
        for joined in groups:
            await layer.group_add(joined, channel)
        incoming = asyncio.ensure_future(layer.receive(channel))
        # Tabs that opened before this channel joined answer "here".
        presence = {"type": "chat.presence", "sender": channel}
        await layer.group_send(group, {**presence, "event": "who"})
    except Exception as error:  # noqa: BLE001 - the layer is down: nobody can come back
        logger.info("Channel layer: cannot keep the reply of %s: %r", group, error)
        if channel is not None:
            await leave_layer(layer, channel, groups)
        await asyncio.sleep(grace)
        stop()
        return
    deadline = loop.time() + grace
    try:
        while True:
            timeout = None if watchers else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait({incoming}, timeout=timeout)
            if not done:
                logger.info("Nobody came back to %s in %s s: stopping its reply", group, grace)
                stop()
                return
            message = incoming.result()
            incoming = asyncio.ensure_future(layer.receive(channel))
            if message["type"] == "chat.stop":
                stop()
                return
            if message["type"] == "chat.presence" and message["sender"] != channel:
                if message["event"] == "left":
                    watchers.discard(message["sender"])
                    if not watchers:
                        deadline = loop.time() + grace
                else:  # "joined", "here" in answer to this channel, or a listener's "who"
                    watchers.add(message["sender"])
    finally:
        incoming.cancel()
        await leave_layer(layer, channel, groups)
