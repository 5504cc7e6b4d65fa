"""The in-memory channel layer, with its expiry housekeeping run at most once a second.

Channels' InMemoryChannelLayer drops expired messages and group memberships by walking every
channel and every group on each ``receive`` and ``group_send``: with a thousand open sockets
that walk was a third of the event loop's time (bench/README.md). Expiry is housekeeping,
measured in seconds (a message lives ``expiry`` = 60 s, a membership ``group_expiry`` = a
day) and nothing waits on it, so doing it once a second keeps its meaning at a cost that no
longer grows with every message.
"""

import time

from channels.layers import InMemoryChannelLayer as StockInMemoryChannelLayer


class InMemoryChannelLayer(StockInMemoryChannelLayer):
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
