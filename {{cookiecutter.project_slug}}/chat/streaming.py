"""Pacing of what a reply sends: frames to the asking socket, snapshots to other viewers."""

import time
from collections.abc import Callable


class Every:
    """True at most once per interval; the first call is always due."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.last = float("-inf")

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.interval:
            return False
        self.last = now
        return True


class FrameBuffer:
    """Coalesces pieces of a reply into one WebSocket frame per interval.

    Model tokens are a few bytes each; a frame per token costs the server more than the
    text it carries. The first piece goes out at once, so the reply starts without delay.
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = Every(interval, clock)
        self.pending: list[str] = []

    def add(self, piece: str) -> str | None:
        """Take a piece; return the text of a frame when one is due."""
        self.pending.append(piece)
        return self.drain() if self.every.due() else None

    def drain(self) -> str | None:
        text = "".join(self.pending)
        self.pending.clear()
        return text or None
