"""The async consumer and its database thread: group commit (chat/batching.py), each caller
gets its own outcome and an idle server adds no wait; frames do not pass through that thread."""

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from chat.batching import Batch


class Work:
    """Records the batches it is handed; the first can be held until a test lets it go."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.started = threading.Event()
        self.go = threading.Event()
        if not hold_first:
            self.go.set()

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.started.set()
        assert self.go.wait(timeout=10)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_an_item_on_an_idle_batch_goes_at_once_on_its_own():
    work = Work()
    batch = Batch(work)

    assert await batch(2) == 20
    assert work.batches == [[2]]


async def test_items_that_arrive_while_a_batch_runs_go_together_next():
    work = Work(hold_first=True)
    batch = Batch(work)
    first = asyncio.ensure_future(batch(2))
    assert await asyncio.to_thread(work.started.wait, 10)
    waiting = [asyncio.ensure_future(batch(i)) for i in (4, 6, 8)]
    await asyncio.sleep(0)  # they are queued, not handed over: the thread is busy
    work.go.set()

    assert await first == 20
    assert await asyncio.gather(*waiting) == [40, 60, 80]
    assert work.batches == [[2], [4, 6, 8]]


async def test_each_caller_gets_its_own_result_or_its_own_exception():
    work = Work(hold_first=True)
    batch = Batch(work)
    first = asyncio.ensure_future(batch(0))
    assert await asyncio.to_thread(work.started.wait, 10)
    callers = [asyncio.ensure_future(batch(i)) for i in (1, 2, 3, 4)]
    work.go.set()
    await first

    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert outcomes[1::2] == [20, 40]
    assert [str(error) for error in outcomes[0::2]] == ["odd 1", "odd 3"]
    assert work.batches == [[0], [1, 2, 3, 4]]


async def test_when_the_work_fails_as_a_whole_every_caller_of_that_batch_hears_it():
    def broken(items):
        raise RuntimeError("the database thread failed")

    batch = Batch(broken)
    outcomes = await asyncio.gather(batch(1), batch(2), return_exceptions=True)

    assert [str(error) for error in outcomes] == ["the database thread failed"] * 2
    batch.work = Work()
    assert await batch(2) == 20  # the next batch is not affected


async def test_a_caller_that_gives_up_leaves_the_others_their_results():
    work = Work(hold_first=True)
    batch = Batch(work)
    impatient = asyncio.ensure_future(batch(2))
    patient = asyncio.ensure_future(batch(4))
    assert await asyncio.to_thread(work.started.wait, 10)
    impatient.cancel()
    work.go.set()

    assert await patient == 40
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert work.batches == [[2, 4]]  # its item was stored all the same


async def test_messages_reach_a_socket_while_the_database_thread_is_busy(
    user, conversation, connect
):
    """Channels' dispatch makes a trip to the database thread before each message; the
    consumer's does not, so a watcher's updates never queue behind the database work."""
    watcher = await connect(user, conversation.pk)
    busy, release = threading.Event(), threading.Event()

    def hold() -> None:
        busy.set()
        release.wait(timeout=10)

    holding = asyncio.ensure_future(database_sync_to_async(hold)())
    try:
        assert await asyncio.to_thread(busy.wait, 10)
        update = {"type": "chat.html", "sender": "another tab", "html": "<p>update</p>"}
        await get_channel_layer().group_send(conversation.group_name, update)

        assert await watcher.receive_from(timeout=5) == "<p>update</p>"
        assert not holding.done()
    finally:
        release.set()
        await holding
