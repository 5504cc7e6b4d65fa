"""Group commit: the database work of many connections in one trip to the database thread.

The async consumer's database calls all run in one thread (``database_sync_to_async`` is
thread-sensitive), one after another, and each pays for a connection, a transaction and the
ORM's Python. When a thousand people press Enter within a second, a turn waited behind
hundreds of others for its first word (bench/README.md). A ``Batch`` gathers the items that
arrive while the thread is busy and hands them over together: ``work(items)`` does all of
them in one transaction and returns one outcome per item.

    start = Batch(services.begin_turns)
    turn = await start(item)  # the item's result, or its own exception raised here

An idle server adds no wait: the first item goes at once, on its own. While a batch runs,
the next items queue and go together as soon as it returns.
"""

import asyncio
from collections.abc import Callable, Sequence

from channels.db import database_sync_to_async


class Batch[Item, Result]:
    """``await batch(item)`` runs ``work`` on every item pending at once, in the database thread.

    ``work(items)`` returns a list as long as ``items``: each entry is that item's result, or
    an exception, which is raised to that item's caller alone. If ``work`` raises, every item
    of the batch gets the exception.
    """

    def __init__(self, work: Callable[[list[Item]], Sequence[Result | BaseException]]) -> None:
        self.work = work
        self.pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self.worker: asyncio.Task[None] | None = None

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        if self.worker is not None and self.worker.get_loop() is not loop:
            # A new event loop (each test has its own): what the old one left is gone with it.
            self.pending, self.worker = [], None
        future: asyncio.Future[Result] = loop.create_future()
        self.pending.append((item, future))
        if self.worker is None or self.worker.done():
            self.worker = loop.create_task(self.run())
        return await future

    async def run(self) -> None:
        """Hand over everything pending, and again while more came in meanwhile."""
        taken: list[tuple[Item, asyncio.Future[Result]]] = []
        try:
            while self.pending:
                taken, self.pending = self.pending, []
                try:
                    outcomes = await database_sync_to_async(self.work)([i for i, _ in taken])
                except Exception as error:  # noqa: BLE001 - the batch failed as a whole: each caller hears
                    outcomes = [error] * len(taken)
                for (_, future), outcome in zip(taken, outcomes, strict=True):
                    if future.done():  # its caller was cancelled meanwhile
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                taken = []
        finally:
            # Cancelled with items in hand (the loop is closing): their callers must not hang.
            for _, future in taken + self.pending:
                if not future.done():
                    future.cancel()
            self.pending = []
