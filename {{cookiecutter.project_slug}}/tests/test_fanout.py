"""The outbox that carries a connection's updates to the channel layer (chat/fanout.py)."""

import asyncio

import pytest

from chat import fanout
from chat.fanout import Fanout


class Layer:
    """A channel layer whose sends fail while `down`, recording what got through."""

    def __init__(self):
        self.down = False
        self.sent: list[str] = []
        self.attempts = 0
        self.changes: list[bool] = []
        self.release = asyncio.Event()
        self.release.set()

    async def group_send(self, group: str, message: dict) -> None:
        self.attempts += 1
        await self.release.wait()
        if self.down:
            raise ConnectionError("Redis is down")
        self.sent.append(message["html"])

    async def send(self, channel: str, message: dict) -> None:
        await self.group_send(channel, message)

    async def on_change(self, up: bool) -> None:
        self.changes.append(up)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(fanout, "FIRST_DELAY", 0.01)
    monkeypatch.setattr(fanout, "MAX_DELAY", 0.08)
    monkeypatch.setattr(fanout, "REPLAY_DELAY", 0.05)


def outbox(layer: Layer) -> Fanout:
    loop = asyncio.get_running_loop()
    return Fanout(loop, layer, "this-channel", "conversation-1", layer.on_change)


async def until(condition, limit: float = 10) -> None:
    """Wait for the outbox's plain state to reach a condition."""
    async with asyncio.timeout(limit):
        while not condition():  # noqa: ASYNC110 - plain attributes, nothing to await on
            await asyncio.sleep(0.005)


async def test_put_returns_at_once_while_the_layer_hangs():
    layer = Layer()
    layer.release.clear()  # every send hangs, as with a Redis that stopped answering
    box = outbox(layer)
    box.put("message-1", {"html": "snapshot 0"})
    await until(lambda: layer.attempts == 1)
    for i in range(1, 100):
        box.put("message-1", {"html": f"snapshot {i}"})
    box.put("message-1", {"html": "finished"}, replay=True)

    layer.release.set()
    await until(lambda: "finished" in layer.sent)
    # One send hung; the hundred snapshots queued behind it collapsed into the final state.
    assert layer.sent == ["snapshot 0", "finished"]


async def test_an_outage_keeps_state_drops_snapshots_and_is_told_once_each_way(quick):
    layer = Layer()
    box = outbox(layer)
    layer.down = True
    box.put("turn-1", {"html": "turn"}, keep=True)
    box.put("message-1", {"html": "snapshot"})
    box.put("presence", {"html": "joined"})
    await until(lambda: layer.attempts >= 4)  # retried, with a growing delay
    box.put("message-1", {"html": "finished"}, replay=True)
    await until(lambda: layer.attempts >= 6)

    layer.down = False
    await until(lambda: layer.sent[:2] == ["turn", "finished"])
    assert layer.changes == [False, True]
    # Subscribers that were still reconnecting missed it: the finished state goes out again.
    await until(lambda: layer.sent == ["turn", "finished", "finished"])


async def test_retries_back_off_so_an_outage_costs_few_attempts(quick):
    layer = Layer()
    times: list[float] = []
    send = layer.group_send

    async def timed(group, message):
        times.append(asyncio.get_running_loop().time())
        await send(group, message)

    layer.group_send = timed
    box = outbox(layer)
    layer.down = True
    # A reply streaming through the outage: a snapshot every few milliseconds, each one
    # dropped when its send fails.
    snapshot = 0
    while len(times) < 7:
        snapshot += 1
        box.put("message-1", {"html": f"snapshot {snapshot}"})
        await asyncio.sleep(0.002)
    failed = times[:7]
    layer.down = False
    box.put("message-1", {"html": "finished"}, replay=True)
    await until(lambda: "finished" in layer.sent)

    # Each wait at least doubles, up to MAX_DELAY (a busy machine only makes them longer),
    # however often there is something new to send: an outage of a minute costs a
    # connection about 60 / MAX_DELAY attempts.
    assert snapshot > 50
    gaps = [later - earlier for earlier, later in zip(failed, failed[1:], strict=False)]
    assert all(
        gap >= wait * 0.9
        for gap, wait in zip(gaps, [0.01, 0.02, 0.04, 0.08, 0.08, 0.08], strict=True)
    )


async def test_a_closed_connection_gives_up_when_the_layer_stays_down(quick):
    layer = Layer()
    box = outbox(layer)
    layer.down = True
    box.put("turn-1", {"html": "turn"}, keep=True)
    box.close()
    await until(lambda: box.task is not None and box.task.done())
    assert layer.sent == []
