"""Abuse limits of the chat socket, each set in settings and answered with a clear message.

- CHAT_SOCKETS_PER_USER: sockets one user may hold open at once, in one server process.
- CHAT_FRAMES_PER_SECOND: frames one connection may send a second on average; bursts of
  twice that are let through. The first frame over the limit is answered with a notice,
  the rest are dropped unanswered (an answer per frame would itself be the flood).
- CHAT_MESSAGES_PER_MINUTE: replies one user may ask for a minute, retries included,
  across all their conversations and every server process (a query on the shared
  database, serialised per user by a row lock).
- CHAT_MAX_FRAME_BYTES (chat.frames) bounds a frame before it is parsed.
"""

import time
from collections import Counter
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from .models import Message

# Close code for a socket refused by a limit: in the range for applications (RFC 6455
# 7.4.2), and not one htmx's ws extension reconnects after (1006, 1011, 1012, 1013).
CLOSE_OVER_LIMIT = 4429

# Open sockets per user id, in this process.
open_sockets: Counter[int] = Counter()

monotonic = time.monotonic  # replaced by tests that play with time


class ConnectionLimits:
    """The limits of one connection: call admit() in connect(), release() in disconnect(),
    and refuse_frame() first thing in receive()."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.admitted = False
        self.rate = settings.CHAT_FRAMES_PER_SECOND
        self.burst = 2 * self.rate
        self.tokens = float(self.burst)
        self.refilled_at = monotonic()
        self.warned = False

    def admit(self) -> str | None:
        """None if the user may open one more socket (now counted); else why not."""
        limit = settings.CHAT_SOCKETS_PER_USER
        if open_sockets[self.user_id] >= limit:
            return (
                f"You have {limit} chat connections open, the most allowed. "
                "Close a few tabs, then reload this page."
            )
        open_sockets[self.user_id] += 1
        self.admitted = True
        return None

    def release(self) -> None:
        if self.admitted:
            self.admitted = False
            open_sockets[self.user_id] -= 1
            if open_sockets[self.user_id] <= 0:
                del open_sockets[self.user_id]

    def refuse_frame(self) -> str | None:
        """None to handle this frame; a notice to send instead; "" to drop it unanswered.

        A token bucket: CHAT_FRAMES_PER_SECOND tokens a second, holding at most twice that.
        """
        now = monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.refilled_at) * self.rate)
        self.refilled_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.warned = False
            return None
        if self.warned:
            return ""
        self.warned = True
        return (
            f"You are sending faster than {self.rate:g} frames a second; "
            "the extra ones were ignored."
        )


def reply_rate_refusal(user) -> str | None:
    """None if ``user`` may ask for one more reply now; else the message to show.

    Must run inside the transaction that creates the reply (see replies_asked).
    """
    return rate_refusal(replies_asked([user.pk])[user.pk])


def replies_asked(user_ids) -> Counter[int]:
    """How many replies each of these users asked for in the last minute.

    Counts the assistant messages created in the last minute in all of a user's
    conversations: one per message sent and one per retry. Must run inside the transaction
    that creates the replies: it locks the users' rows first (SELECT ... FOR UPDATE on
    PostgreSQL, in id order; SQLite's IMMEDIATE transactions lock the whole database), so
    two processes cannot both pass the count with one request left.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("replies_asked() runs in the transaction that creates the replies")
    users = get_user_model().objects.select_for_update().filter(pk__in=user_ids).order_by("pk")
    list(users.values_list("pk"))
    since = timezone.now() - timedelta(minutes=1)
    recent = Message.objects.filter(
        conversation__owner__in=user_ids, role=Message.Role.ASSISTANT, created_at__gte=since
    )
    counts = recent.values_list("conversation__owner").annotate(asked=Count("pk")).order_by()
    return Counter(dict(counts))


def rate_refusal(asked: int) -> str | None:
    """None if a user who asked for ``asked`` replies in the last minute may ask for one more."""
    limit = settings.CHAT_MESSAGES_PER_MINUTE
    if asked >= limit:
        return (
            f"You can send {limit} messages a minute (retries count too). "
            "Wait a moment, then try again."
        )
    return None
