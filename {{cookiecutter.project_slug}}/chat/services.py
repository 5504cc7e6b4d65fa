"""Database work of a chat turn. Plain sync functions, used by views and consumers."""

import asyncio
import functools
import logging
import time
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django import db
from django.conf import settings
from django.contrib import auth
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone

from . import limits
from .frames import storable_text
from .llm import ChatMessage, EndReason
from .llm.base import EMPTY
from .models import Conversation, Message

logger = logging.getLogger(__name__)

TITLE_LENGTH = 60
NOT_SAVED = "Your message was not saved: the database is not answering. Send it again."

# Failures of the database rather than of the data (PEP 249): the server went away or
# restarted, every connection of the pool stayed busy past its timeout (psycopg_pool's
# PoolTimeout), a lock or statement timeout. Django's own exceptions wrap the driver's.
# https://peps.python.org/pep-0249/#operationalerror
CONNECTION_ERRORS = (OperationalError, InterfaceError)


class Refused(Exception):
    """The turn cannot start; the message is shown to the user and nothing is stored."""


def refused_when_the_database_fails(start):
    """A turn that cannot reach the database is Refused with NOT_SAVED (logged for the operator).

    Its transaction never committed, so nothing of it is stored; the socket stays open.
    """

    @functools.wraps(start)
    def guarded(*args, **kwargs):
        try:
            return start(*args, **kwargs)
        except CONNECTION_ERRORS as error:
            logger.warning("A turn could not start, the database failed: %r", error)
            raise Refused(NOT_SAVED) from error

    return guarded


def conversation_of(user, conversation_id: int) -> Conversation | None:
    """The user's conversation with this id; None also when it belongs to someone else."""
    if not user.is_authenticated:
        return None
    return Conversation.objects.filter(pk=conversation_id, owner=user).first()


def signed_in(scope: dict) -> bool:
    """Whether the socket's session still signs in the user it opened with.

    Read afresh from the session store, as django.contrib.auth.get_user does for each HTTP
    request: logging out (the session is deleted), a new password (its hash no longer
    matches) or deactivation (is_active=False) all end it.
    """
    session = scope.get("session")
    if session is None or session.session_key is None:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session.session_key)
    user = auth.get_user(SimpleNamespace(session=store))
    return user.is_authenticated and user.pk == scope["user"].pk


def conversations_of(user) -> list[Conversation]:
    return list(Conversation.objects.filter(owner=user).exclude(title=""))


INTERRUPTED = "The server stopped while writing this reply. The text so far is kept."


def generating(conversation: Conversation) -> Message | None:
    """The reply still being generated in this conversation, if any.

    Only a reply whose writer is alive counts: its checkpoints refresh updated_at every
    CHAT_CHECKPOINT_INTERVAL seconds (chat/checkpoints.py).
    """
    alive_since = timezone.now() - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    streaming = conversation.messages.filter(status=Message.Status.STREAMING)
    return streaming.filter(updated_at__gte=alive_since).order_by("-created_at").first()


def settle(conversation: Conversation) -> int:
    """Mark the conversation's replies whose writer died as interrupted; returns how many.

    Their text is what the last checkpoint wrote; the page offers Retry.
    """
    alive_since = timezone.now() - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    dead = conversation.messages.filter(status=Message.Status.STREAMING, updated_at__lt=alive_since)
    return dead.update(status=Message.Status.INTERRUPTED, error=INTERRUPTED)


def check_rate(user) -> None:
    """Refused past CHAT_MESSAGES_PER_MINUTE replies (retries included): see chat.limits."""
    if refusal := limits.reply_rate_refusal(user):
        raise Refused(refusal)


@refused_when_the_database_fails
def start_turn(conversation: Conversation, text: str) -> tuple[Message, Message]:
    """Store the user's message and an empty reply to stream into, before calling the model."""
    with transaction.atomic():
        # Locks the conversation row (PostgreSQL), so two tabs cannot both start a reply.
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
        settle(conversation)
        if generating(conversation):
            raise Refused("A reply is still being written. Wait for it, or press Stop.")
        check_rate(conversation.owner)
        question = conversation.messages.create(role=Message.Role.USER, content=text)
        reply = conversation.messages.create(
            role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
        )
        if not conversation.title:
            conversation.title = text[:TITLE_LENGTH]
        conversation.save(update_fields=["title", "updated_at"])
    return question, reply


@refused_when_the_database_fails
def start_retry(conversation: Conversation) -> Message:
    """A new reply to the latest user message, after one that ended short (see can_retry)."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
        settle(conversation)
        if generating(conversation):
            raise Refused("A reply is still being written. Wait for it, or press Stop.")
        last = conversation.messages.last()
        if last is None or not last.can_retry:
            raise Refused("There is no unfinished reply to retry.")
        check_rate(conversation.owner)
        return conversation.messages.create(
            role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
        )


def model_input(reply: Message) -> list[ChatMessage]:
    """The conversation before this reply, newest first until the budget is spent.

    Failed and filtered replies are left out, and so are earlier attempts at this reply (a retry
    answers the latest user message afresh); the latest user message is always kept.
    """
    earlier = (
        Message.objects.filter(conversation_id=reply.conversation_id, pk__lt=reply.pk)
        .exclude(status__in=[Message.Status.ERROR, Message.Status.FILTERED])
        .exclude(content="")
        .order_by("-pk")
        .values_list("role", "content")
    )
    budget = settings.CHAT_HISTORY_BUDGET
    kept: list[ChatMessage] = []
    for role, content in earlier.iterator():
        if not kept and role == Message.Role.ASSISTANT:
            continue  # an earlier attempt at this reply
        if kept and len(content) > budget:
            break
        budget -= len(content)
        kept.append(ChatMessage(role=role, content=content))
    kept.reverse()
    return kept


def status_of(reason: EndReason) -> Message.Status:
    """The stored status of a reply whose stream ended this way."""
    return {
        EndReason.FINISHED: Message.Status.COMPLETE,
        EndReason.LENGTH: Message.Status.TRUNCATED,
        EndReason.FILTERED: Message.Status.FILTERED,
        EndReason.BLOCKED: Message.Status.FILTERED,
        EndReason.ERROR: Message.Status.ERROR,
        EndReason.EMPTY: Message.Status.ERROR,
    }[reason]


def finish_reply(reply: Message, content: str, status: str, error: str = "") -> Message:
    """Store how the reply ended; a reply without text is never complete."""
    if status == Message.Status.COMPLETE and not content.strip():
        status, error = Message.Status.ERROR, EMPTY
    reply.content = storable_text(content)  # model output: nothing the database refuses
    reply.status = status
    reply.error = error
    fields = ["content", "status", "error", "detail", "updated_at"]
    try:
        reply.save(update_fields=fields)
    except DatabaseError:  # a connection cut under the write: once more, on a fresh one
        logger.warning("Could not store reply %s; trying again", reply.pk, exc_info=True)
        db.connection.close()
        reply.save(update_fields=fields)  # if this fails too, the reply soon shows interrupted
    return reply


# Conversation management (rename, delete, search), used by the sidebar's views.

STOP_WAIT = 5.0  # seconds a delete waits for a reply in progress to stop
SEARCH_RESULTS = 50


def search_conversations(user, query: str) -> list[Conversation]:
    """The user's conversations whose title or any message contains the query (any case)."""
    query = query.strip()
    if not query:
        return conversations_of(user)
    matching = Conversation.objects.filter(owner=user).exclude(title="")
    matching = matching.filter(
        Q(title__icontains=query) | Q(messages__content__icontains=query)
    ).distinct()
    return list(matching[:SEARCH_RESULTS])


async def astop_reply(conversation: Conversation, wait: float = STOP_WAIT) -> bool:
    """Stop the reply being written in this conversation, in whatever process writes it.

    Sends {"type": "chat.stop"} to the conversation's channel-layer group (every consumer
    watching it handles chat_stop), then waits up to `wait` seconds until no reply is
    streaming. Returns True when none is, False when one still is after the wait. Async,
    so that the wait holds no thread the consumers need to finish the reply.
    """
    if await sync_to_async(generating)(conversation) is None:
        return True
    try:
        await get_channel_layer().group_send(
            conversation.group_name, {"type": "chat.stop", "sender": "http"}
        )
    except Exception:  # the layer is down: nothing can be told to stop
        logger.warning("Could not ask conversation %s to stop", conversation.pk, exc_info=True)
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if await sync_to_async(generating)(conversation) is None:
            return True
    return False
