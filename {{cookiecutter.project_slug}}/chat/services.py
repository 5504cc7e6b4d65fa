"""Database work of a chat turn. Plain sync functions, used by views and consumers."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from .llm import ChatMessage, EndReason
from .llm.base import EMPTY
from .models import Conversation, Message

TITLE_LENGTH = 60


class Refused(Exception):
    """The turn cannot start; the message is shown to the user and nothing is stored."""


def conversation_of(user, conversation_id: int) -> Conversation | None:
    """The user's conversation with this id; None also when it belongs to someone else."""
    if not user.is_authenticated:
        return None
    return Conversation.objects.filter(pk=conversation_id, owner=user).first()


def conversations_of(user) -> list[Conversation]:
    return list(Conversation.objects.filter(owner=user).exclude(title=""))


def generating(conversation: Conversation) -> Message | None:
    """The reply still being generated in this conversation, if any."""
    started_after = timezone.now() - timedelta(seconds=settings.CHAT_GENERATION_TIMEOUT)
    streaming = conversation.messages.filter(status=Message.Status.STREAMING)
    return streaming.filter(created_at__gte=started_after).order_by("-created_at").first()


def check_rate(user) -> None:
    limit = settings.CHAT_MESSAGES_PER_MINUTE
    since = timezone.now() - timedelta(minutes=1)
    sent = Message.objects.filter(
        conversation__owner=user, role=Message.Role.USER, created_at__gte=since
    ).count()
    if sent >= limit:
        raise Refused(f"You can send {limit} messages a minute. Wait a moment, then try again.")


def start_turn(conversation: Conversation, text: str) -> tuple[Message, Message]:
    """Store the user's message and an empty reply to stream into, before calling the model."""
    with transaction.atomic():
        # Locks the conversation row (PostgreSQL), so two tabs cannot both start a reply.
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
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


def start_retry(conversation: Conversation) -> Message:
    """A new reply to the latest user message, after one that ended short (see can_retry)."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
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


def status_of(reason: EndReason) -> str:
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
    reply.content = content
    reply.status = status
    reply.error = error
    reply.save(update_fields=["content", "status", "error", "detail", "updated_at"])
    return reply
