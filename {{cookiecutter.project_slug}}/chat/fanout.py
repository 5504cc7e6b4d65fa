"""Best-effort fan-out through the channel layer, off the path that streams a reply.

A reply streams to the socket that asked without ever waiting on the channel layer: what
other connections should see goes into a small outbox, which a task of this connection
sends. A slow or unreachable layer (its server down or hanging) costs the asker's reply
nothing.

- The outbox holds one entry per thing shown on the page: a newer snapshot of a reply
  replaces the one still waiting, and the finished reply replaces its last snapshot.
- After a failed send the outbox keeps what carries state (``keep=True``: a turn, a
  finished reply, a title) and drops the rest (snapshots, presence); it tries again after
  ``FIRST_DELAY`` seconds, doubling up to ``MAX_DELAY``, so an outage costs each
  connection with something to send one attempt per ``MAX_DELAY`` seconds at most.
- The first send that succeeds after an outage delivers what was kept, so connections
  watching from other tabs and processes catch up with the final state. A pub/sub layer
  keeps nothing for a subscriber that is still reconnecting (about a second after its
  server is back), so what can be shown twice without harm (``replay=True``: a reply's
  finished state, which replaces itself) is sent once more ``REPLAY_DELAY`` seconds later.
  Pages also check a reply that shows no progress for a while themselves (chat.js).
- Joining a group (``join``) goes through the outbox too, kept across an outage, so what
  is queued after it is sent once the connection is in the group.
- ``on_change(False)`` is awaited once when fan-out goes down and ``on_change(True)`` once
  when it is back. Any exception from the layer counts as "down": fan-out is best effort,
  and the reason is logged.
"""

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

logger = logging.getLogger(__name__)

FIRST_DELAY = 0.5  # seconds before the first retry after a failed send
MAX_DELAY = 10.0  # seconds between retries at most, while the layer stays down
MAX_ENTRIES = 64  # the oldest entry is dropped past this many
REPLAY_DELAY = 3.0  # seconds after an outage before replayable entries are sent again


@dataclass(frozen=True)
class Entry:
    call: str  # the layer's method: "group_send", "send" or "group_add"
    target: str  # the group, or the single channel of "send"
    message: dict | None  # None for "group_add"
    keep: bool  # still worth sending after an outage
    replay: bool  # harmless to show twice: sent again a while after an outage


class Fanout:
    """The outbox of one connection: what it sends through the channel layer, in order.

    ``put`` and ``join`` may be called from any thread (the sync consumer's reply threads
    too); the layer is called on ``loop``. ``channel`` is the connection's own, ``group``
    the conversation's, which the connection joined itself; ``groups`` lists every group
    it is in.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        layer,
        channel: str,
        group: str,
        on_change: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.loop = loop
        self.layer = layer
        self.channel = channel
        self.group = group
        self.groups = {group}
        self.on_change = on_change
        self.outbox: OrderedDict[str, Entry] = OrderedDict()
        self.to_replay: dict[str, Entry] = {}
        self.up = True
        self.delay = FIRST_DELAY  # before the next retry, while the layer is down
        self.retry_at = 0.0  # loop time of the next attempt, while the layer is down
        self.closing = False
        self.task: asyncio.Task | None = None

    def put(
        self,
        key: str,
        message: dict,
        *,
        channel: str | None = None,
        group: str | None = None,
        keep: bool = False,
        replay: bool = False,
    ) -> None:
        """Queue a message for a channel, or a group (by default the conversation's),
        replacing any still waiting under the same key; never blocks."""
        if channel is not None:
            entry = Entry("send", channel, message, keep or replay, replay)
        else:
            entry = Entry("group_send", group or self.group, message, keep or replay, replay)
        self._put_threadsafe(key, entry)

    def join(self, group: str) -> None:
        """Join another group, before anything queued after this is sent; never blocks."""
        self._put_threadsafe(f"join-{group}", Entry("group_add", group, None, True, False))

    def _put_threadsafe(self, key: str, entry: Entry) -> None:
        with suppress(RuntimeError):  # the server's loop has closed: nobody is left to tell
            self.loop.call_soon_threadsafe(self._put, key, entry)

    def close(self) -> None:
        """The connection is gone: send what is waiting (within limits), then stop; join
        nothing more."""
        self.closing = True
        with suppress(RuntimeError):  # the server's loop has closed
            self.loop.call_soon_threadsafe(self._drop_joins)

    def _drop_joins(self) -> None:
        for key in [key for key, entry in self.outbox.items() if entry.call == "group_add"]:
            del self.outbox[key]

    def _put(self, key: str, entry: Entry) -> None:
        self.outbox[key] = entry
        while len(self.outbox) > MAX_ENTRIES:
            self.outbox.popitem(last=False)
        if self.task is None or self.task.done():
            self.task = self.loop.create_task(self._drain())

    async def _drain(self) -> None:
        while self.outbox:
            if not self.up:  # wait out the backoff, whichever put started this drain
                await asyncio.sleep(self.retry_at - self.loop.time())
            key, entry = next(iter(self.outbox.items()))
            try:
                if entry.call == "group_add":
                    await self.layer.group_add(entry.target, self.channel)
                    if self.closing:  # the connection left its groups meanwhile
                        await self.layer.group_discard(entry.target, self.channel)
                    else:
                        self.groups.add(entry.target)
                else:
                    await getattr(self.layer, entry.call)(entry.target, entry.message)
            except Exception as error:  # noqa: BLE001 - best effort, logged
                await self._went_down(error)
                if self.closing and self.delay >= MAX_DELAY:
                    return  # the connection is gone and the layer stays down: give up
                self.retry_at = self.loop.time() + self.delay
                self.delay = min(self.delay * 2, MAX_DELAY)
                continue
            if self.outbox.get(key) is entry:  # not replaced by a newer one meanwhile
                del self.outbox[key]
            if entry.replay and not self.up:  # it went out across an outage
                self.to_replay[key] = entry
            if not self.up:
                self.up = True
                self.delay = FIRST_DELAY
                logger.warning("Channel layer reachable again: fan-out resumed")
                self.loop.call_later(REPLAY_DELAY, self._replay)
                await self.on_change(True)

    def _replay(self) -> None:
        for key, entry in self.to_replay.items():
            if key not in self.outbox:  # a newer state is on its way anyway
                self._put(key, entry)
        self.to_replay.clear()

    async def _went_down(self, error: Exception) -> None:
        self.to_replay.update((k, e) for k, e in self.outbox.items() if e.replay)
        for key in [key for key, entry in self.outbox.items() if not entry.keep]:
            del self.outbox[key]
        if self.up:
            self.up = False
            logger.warning("Channel layer unreachable, fan-out paused: %r", error)
            await self.on_change(False)


async def renew_membership(fanout: Fanout) -> None:
    """Keep a connection in its groups for as long as it lives.

    Layers with a group expiry (Channels' in-memory layer: 86,400 s by default) drop a
    member that joined longer ago than that; joining again restarts its clock. Returns at
    once for layers without one (the Redis pub/sub layer). Cancel it when the connection
    closes.
    """
    expiry = getattr(fanout.layer, "group_expiry", None)
    if not expiry:
        return
    while True:
        await asyncio.sleep(expiry / 4)
        for group in list(fanout.groups):
            fanout.join(group)


async def leave_layer(layer, channel: str, groups: list[str]) -> None:
    """Leave the groups and delete the channel (chat/layers.py), as far as the layer lets:
    whatever ended its owner, it leaves nothing behind in the layer."""
    try:
        for group in groups:
            await layer.group_discard(group, channel)
        await layer.delete_channel(channel)
    except Exception as error:  # noqa: BLE001 - the layer is down: nothing to leave there
        logger.info("Channel layer: could not leave %s: %r", ", ".join(groups), error)
