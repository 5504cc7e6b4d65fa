"""Replies that survive their server: the text of every reply streaming in this process is
written back once a second, in one transaction, by one thread.

That write is also the reply's heartbeat: it refreshes ``Message.updated_at`` even while the
provider sends nothing. A streaming reply whose heartbeat is older than
``CHAT_HEARTBEAT_TIMEOUT`` seconds has lost its writer (a crash, SIGKILL, a reload): the page
and the next turn see it as interrupted, with the text last written (services.settle()).

At a normal exit, ``save_all()`` stores the replies still tracked as stopped, with their text so
far: at the ASGI lifespan shutdown (uvicorn, which then ends with the signal it got, so
atexit functions do not run) and at exit (daphne, a devserver reload).
"""

import atexit
import logging
import threading
import time
from itertools import batched

from asgiref.sync import sync_to_async
from django import db
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import bulk
from .models import Message

logger = logging.getLogger(__name__)

CHUNK = 500  # replies per heartbeat UPDATE: SQLite allows 32,766 query parameters


class Checkpoints:
    """The replies streaming in this process and their text so far.

    ``track(pk, parts)`` takes the list the writer appends pieces to (already storable text)
    and may be called from any thread; ``forget(pk)`` ends it. ``write()`` stores every
    tracked reply whose text grew and refreshes the heartbeat of all of them; a background
    thread calls it every ``CHAT_CHECKPOINT_INTERVAL`` seconds while anything is tracked.
    """

    def __init__(self) -> None:
        self.replies: dict[int, list[str]] = {}
        self.written: dict[int, int] = {}  # pieces stored at the last write, by reply
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def track(self, pk: int, parts: list[str]) -> None:
        with self.lock:
            self.replies[pk] = parts
            self.written[pk] = 0
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="checkpoints", daemon=True)
                self.thread.start()

    def forget(self, pk: int) -> None:
        with self.lock:
            self.replies.pop(pk, None)
            self.written.pop(pk, None)

    def run(self) -> None:
        while True:
            time.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
            with self.lock:
                if not self.replies:
                    self.thread = None
                    return
            try:
                self.write()
            except Exception:  # noqa: BLE001 - the next round tries again; logged
                logger.exception("Could not write reply checkpoints")

    def write(self) -> int:
        """Store the text of every tracked reply that grew; returns how many replies."""
        with self.lock:
            pending = {pk: (len(parts), parts) for pk, parts in self.replies.items()}
        pks = list(pending)
        grown = {
            pk: "".join(parts[:n])
            for pk, (n, parts) in pending.items()
            if n != self.written.get(pk)
        }
        now = timezone.now()
        # Only replies still streaming: one that ended meanwhile keeps its final text.
        streaming = Message.Status.STREAMING
        beating = [pk for pk in pks if pk not in grown]
        try:
            with transaction.atomic():
                texts = [(text, now, pk) for pk, text in grown.items()]
                bulk.update_each(Message, ["content", "updated_at"], texts, status=streaming)
                for chunk in batched(beating, CHUNK):
                    Message.objects.filter(pk__in=chunk, status=streaming).update(updated_at=now)
        finally:
            db.connection.close()  # back to the pool until the next round
        with self.lock:
            for pk, (n, _) in pending.items():
                if pk in self.written:
                    self.written[pk] = n
        return len(grown)

    def save_all(self) -> int:
        """At exit: store every reply still tracked as stopped, with its text so far."""
        with self.lock:
            pending = {pk: "".join(parts) for pk, parts in self.replies.items()}
            self.replies.clear()
        for pk, text in pending.items():
            Message.objects.filter(pk=pk, status=Message.Status.STREAMING).update(
                content=text, status=Message.Status.STOPPED, updated_at=timezone.now()
            )
        if pending:
            logger.warning("Replies saved as stopped at exit: %d", len(pending))
        return len(pending)


# One per process. Python runs atexit functions when the server returns from SIGTERM or the
# autoreloader exits for a reload; nothing runs on SIGKILL, where the heartbeat tells instead.
checkpoints = Checkpoints()
atexit.register(checkpoints.save_all)


async def lifespan(scope: dict, receive, send) -> None:
    """The ASGI lifespan protocol: at shutdown, save the replies still streaming as stopped.

    https://asgi.readthedocs.io/en/latest/specs/lifespan.html. uvicorn sends the shutdown
    event once its connections are closed, while replies may still be streaming for a tab
    that could come back (chat/resume.py).
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await sync_to_async(checkpoints.save_all, thread_sensitive=False)()
            await send({"type": "lifespan.shutdown.complete"})
            return
