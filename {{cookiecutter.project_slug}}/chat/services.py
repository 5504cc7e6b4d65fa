"""Database work of a chat turn. Plain sync functions, used by views and consumers."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from . import limits
from .frames import storable_text
from .llm import ChatMessage
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
    """Refused past CHAT_MESSAGES_PER_MINUTE replies (retries included): see chat.limits."""
    if refusal := limits.reply_rate_refusal(user):
        raise Refused(refusal)


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
    """A new reply to the latest user message, after a failed one."""
    with transaction.atomic():
        conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
        if generating(conversation):
            raise Refused("A reply is still being written. Wait for it, or press Stop.")
        last = conversation.messages.last()
        if last is None or last.status != Message.Status.ERROR:
            raise Refused("There is no failed reply to retry.")
        check_rate(conversation.owner)
        return conversation.messages.create(
            role=Message.Role.ASSISTANT, status=Message.Status.STREAMING
        )


def model_input(reply: Message) -> list[ChatMessage]:
    """The conversation before this reply, newest first until the budget is spent.

    Failed replies are left out; the latest user message is always kept.
    """
    earlier = (
        Message.objects.filter(conversation_id=reply.conversation_id, pk__lt=reply.pk)
        .exclude(status=Message.Status.ERROR)
        .exclude(content="")
        .order_by("-pk")
        .values_list("role", "content")
    )
    budget = settings.CHAT_HISTORY_BUDGET
    kept: list[ChatMessage] = []
    for role, content in earlier.iterator():
        if kept and len(content) > budget:
            break
        budget -= len(content)
        kept.append(ChatMessage(role=role, content=content))
    kept.reverse()
    return kept


def finish_reply(reply: Message, content: str, status: str, error: str = "") -> Message:
    reply.content = storable_text(content)  # model output: nothing the database refuses
    reply.status = status
    reply.error = error
    reply.save(update_fields=["content", "status", "error", "updated_at"])
    return reply
