"""Database work of a chat turn. Plain sync functions, used by views and consumers."""

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from types import SimpleNamespace
from typing import NamedTuple, cast

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django import db
from django.conf import settings
from django.contrib import auth
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.db import DatabaseError, InterfaceError, OperationalError, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from . import bulk, limits
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


def signed_in_all(scopes: list[dict]) -> list[bool]:
    """signed_in for many sockets: two queries for all those plainly still signed in.

    With sessions in the database (Django's default engine), a socket passes here when its
    session row is there and unexpired and names its user, one of AUTHENTICATION_BACKENDS
    and the hash of the user's password, and the user may still log in: what get_user checks
    for a session that needs nothing done. Every other socket gets signed_in() itself, which
    also does what get_user does then (a session with an old hash is flushed).
    """
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    plainly = [False] * len(scopes)
    if scopes and issubclass(store_class, DatabaseSessionStore):
        keys = [scope["session"].session_key for scope in scopes if scope.get("session")]
        rows = store_class.get_model_class().objects.filter(
            session_key__in=[key for key in keys if key], expire_date__gt=timezone.now()
        )
        sessions = dict(rows.values_list("session_key", "session_data"))
        users = auth.get_user_model()._default_manager.in_bulk(
            {scope["user"].pk for scope in scopes}
        )
        for i, scope in enumerate(scopes):
            data = sessions.get(getattr(scope.get("session"), "session_key", None))
            user = users.get(scope["user"].pk)
            if data is not None and user is not None:
                plainly[i] = _names(store_class().decode(data), user)
    return [passed or signed_in(scope) for passed, scope in zip(plainly, scopes, strict=True)]


def _names(session: dict, user) -> bool:
    """Whether get_user would return this user for this session's data, as it stands."""
    backend_path = session.get(auth.BACKEND_SESSION_KEY)
    if backend_path not in settings.AUTHENTICATION_BACKENDS:
        return False
    backend = auth.load_backend(backend_path)
    if not isinstance(backend, ModelBackend) or type(backend).get_user is not ModelBackend.get_user:
        return False  # a backend of its own: only get_user knows
    session_hash = session.get(auth.HASH_SESSION_KEY)
    return (
        str(session.get(auth.SESSION_KEY)) == str(user.pk)
        and backend.user_can_authenticate(user)
        and bool(session_hash)
        and constant_time_compare(session_hash, user.get_session_auth_hash())
    )


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


class SignedOut(Exception):
    """The socket's session no longer signs in its user (see signed_in)."""


BUSY = "A reply is still being written. Wait for it, or press Stop."


@dataclass
class NewTurn:
    """A message to start a turn with; with the socket's scope, its session is checked too."""

    conversation: Conversation
    text: str
    scope: dict | None = None


@dataclass
class Turn:
    question: Message
    reply: Message  # empty and streaming, to stream into
    history: list[ChatMessage]  # what the model is given (model_input)


def start_turn(conversation: Conversation, text: str) -> tuple[Message, Message]:
    """Store the user's message and an empty reply to stream into, before calling the model."""
    (outcome,) = begin_turns([NewTurn(conversation, text)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome.question, outcome.reply


def begin_turns(new_turns: list[NewTurn]) -> list[Turn | Exception]:
    """start_turn and model_input for many turns at once, one outcome per turn, in order.

    Each turn gets the checks it would get alone, in the same order: SignedOut if its
    session has ended, Refused while its conversation has a reply being written (a turn
    earlier in the list counts) or past its owner's rate limit (earlier turns of the same
    owner count), Conversation.DoesNotExist once its conversation is deleted. The turns that
    pass are stored in one transaction, in a few queries whatever their number (the async
    consumer gathers them: chat/batching.py). A write the database refuses for one turn
    fails that turn alone; a database that fails as a whole refuses them all with NOT_SAVED.
    """
    outcomes: list[Turn | Exception | None] = [None] * len(new_turns)
    try:
        with_scope = [(i, new.scope) for i, new in enumerate(new_turns) if new.scope is not None]
        signed = signed_in_all([scope for _, scope in with_scope])
        for (i, _), still in zip(with_scope, signed, strict=True):
            if not still:
                outcomes[i] = SignedOut()
        checked = [(i, new) for i, new in enumerate(new_turns) if outcomes[i] is None]
        if checked:
            with transaction.atomic():
                started = _start_turns(checked, outcomes)
                for i, turn in started:
                    outcomes[i] = turn
                _add_histories([turn for _, turn in started])
    except CONNECTION_ERRORS as error:
        logger.warning("Turns could not start, the database failed: %r", error)
        # Nothing of the transaction was stored; every turn hears it (the sessions too).
        return [Refused(NOT_SAVED) for _ in new_turns]
    return cast(list[Turn | Exception], outcomes)  # every one was filled in


def _start_turns(checked: list[tuple[int, NewTurn]], outcomes: list) -> list[tuple[int, Turn]]:
    """The checks and writes of begin_turns, in its transaction: refusals go into outcomes."""
    ids = sorted({new.conversation.pk for _, new in checked})
    # Locks the conversations' rows (PostgreSQL), so two tabs cannot both start a reply; in
    # id order, so that two processes locking some of the same rows wait instead of deadlock.
    conversations = Conversation.objects.select_for_update().order_by("pk").in_bulk(ids)
    alive_since = timezone.now() - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT)
    streaming = Message.objects.filter(conversation_id__in=ids, status=Message.Status.STREAMING)
    # settle() and generating(), for all the conversations at once.
    streaming.filter(updated_at__lt=alive_since).update(
        status=Message.Status.INTERRUPTED, error=INTERRUPTED
    )
    alive = streaming.filter(updated_at__gte=alive_since)
    busy = set(alive.values_list("conversation_id", flat=True))
    asked = limits.replies_asked({c.owner_id for c in conversations.values()})
    passed: list[tuple[int, NewTurn, Conversation]] = []
    for i, new in checked:
        conversation = conversations.get(new.conversation.pk)
        if conversation is None:
            outcomes[i] = Conversation.DoesNotExist(f"Conversation {new.conversation.pk}")
        elif conversation.pk in busy:
            outcomes[i] = Refused(BUSY)
        elif refusal := limits.rate_refusal(asked[conversation.owner_id]):
            outcomes[i] = Refused(refusal)
        else:
            busy.add(conversation.pk)
            asked[conversation.owner_id] += 1
            passed.append((i, new, conversation))
    if not passed:
        return []
    try:
        with transaction.atomic():  # a savepoint: a refused write rolls back only this
            return list(zip([i for i, _, _ in passed], _store_turns(passed), strict=True))
    except CONNECTION_ERRORS:
        raise
    except DatabaseError:
        # The database refused some turn's write: one at a time, to fail that one alone.
        started = []
        for i, new, conversation in passed:
            try:
                with transaction.atomic():
                    (turn,) = _store_turns([(i, new, conversation)])
                started.append((i, turn))
            except CONNECTION_ERRORS:
                raise
            except DatabaseError as error:
                logger.exception("Turn on conversation %s could not be stored", conversation.pk)
                outcomes[i] = error
        return started


def _store_turns(passed: list[tuple[int, NewTurn, Conversation]]) -> list[Turn]:
    """Insert each turn's message and empty reply, and set the conversations' titles."""
    now = timezone.now()
    rows = []
    for _, new, conversation in passed:
        rows.append(Message(conversation=conversation, role=Message.Role.USER, content=new.text))
        rows.append(
            Message(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
            )
        )
    _insert_messages(rows, now)
    turns = []
    titled = []
    for k, (_, new, conversation) in enumerate(passed):
        if not conversation.title:
            conversation.title = new.text[:TITLE_LENGTH]
        conversation.updated_at = now
        titled.append((conversation.title, now, conversation.pk))
        question, reply = rows[2 * k], rows[2 * k + 1]
        question.conversation = reply.conversation = conversation
        turns.append(Turn(question, reply, history=[]))
    _update_conversations(titled)
    return turns


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


MESSAGE_FIELDS = ["conversation", "role", "content", "status", "error", "detail"]


def _insert_messages(rows: list[Message], now) -> None:
    """Message.objects.bulk_create(rows), created and updated ``now`` (see chat/bulk.py)."""
    for row in rows:
        row.created_at = row.updated_at = now
    bulk.insert(rows, [*MESSAGE_FIELDS, "created_at", "updated_at"])


def _update_conversations(changes: list[tuple[str, object, int]]) -> None:
    """Set (title, updated_at) of each conversation id."""
    bulk.update_each(Conversation, ["title", "updated_at"], changes)


def _add_histories(turns: list[Turn]) -> None:
    """Each turn's model_input, in one query for all of them."""
    if not turns:
        return
    by_conversation = {turn.reply.conversation_id: turn for turn in turns}
    rows: dict[int, list[tuple[str, str]]] = {pk: [] for pk in by_conversation}
    for conversation_id, role, content in _earlier(
        Message.objects.filter(conversation_id__in=list(by_conversation))
    ).values_list("conversation_id", "role", "content"):
        rows[conversation_id].append((role, content))
    for conversation_id, turn in by_conversation.items():
        turn.history = _within_budget(rows[conversation_id])


def _earlier(messages):
    """The messages a model is shown, newest first (see model_input)."""
    return (
        messages.exclude(status__in=[Message.Status.ERROR, Message.Status.FILTERED])
        .exclude(content="")
        .order_by("-pk")
    )


def model_input(reply: Message) -> list[ChatMessage]:
    """The conversation before this reply, newest first until the budget is spent.

    Failed and filtered replies are left out, and so are earlier attempts at this reply (a retry
    answers the latest user message afresh); the latest user message is always kept.
    """
    earlier = Message.objects.filter(conversation_id=reply.conversation_id, pk__lt=reply.pk)
    return _within_budget(_earlier(earlier).values_list("role", "content").iterator())


def _within_budget(newest_first) -> list[ChatMessage]:
    """model_input from (role, content) rows, newest first."""
    budget = settings.CHAT_HISTORY_BUDGET
    kept: list[ChatMessage] = []
    for role, content in newest_first:
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


class Ending(NamedTuple):
    """How a reply ended, for finish_replies."""

    reply: Message
    content: str
    status: str
    error: str = ""


def finish_reply(reply: Message, content: str, status: str, error: str = "") -> Message:
    """Store how the reply ended; a reply without text is never complete."""
    (outcome,) = finish_replies([Ending(reply, content, status, error)])
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def finish_replies(endings: list[Ending]) -> list[Message | Exception]:
    """finish_reply for many replies, in one statement; one outcome per reply, in order.

    A write that fails (a connection cut under it, say) is tried once more, one reply at a
    time on a fresh connection, so a reply the database refuses fails alone.
    """
    replies = []
    for reply, content, status, error in endings:
        if status == Message.Status.COMPLETE and not content.strip():
            status, error = Message.Status.ERROR, EMPTY
        reply.content = storable_text(content)  # model output: nothing the database refuses
        reply.status = status
        reply.error = error
        replies.append(reply)
    try:
        _store_endings(replies)
        return list(replies)
    except DatabaseError:
        logger.warning("Could not store %d replies; trying again", len(replies), exc_info=True)
    db.connection.close()
    outcomes: list[Message | Exception] = []
    for reply in replies:
        try:
            _store_endings([reply])
            outcomes.append(reply)
        except DatabaseError as error:  # the stored reply soon shows interrupted
            db.connection.close()
            outcomes.append(error)
    return outcomes


def _store_endings(replies: list[Message]) -> None:
    """Save each reply's content, status, error and detail, updated now (see chat/bulk.py)."""
    now = timezone.now()
    rows = [(r.content, r.status, r.error, r.detail, now, r.pk) for r in replies]
    with transaction.atomic():
        bulk.update_each(Message, ["content", "status", "error", "detail", "updated_at"], rows)
    for reply in replies:
        reply.updated_at = now


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
