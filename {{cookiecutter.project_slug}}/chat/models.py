from django.conf import settings
from django.db import models


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]

    def __str__(self) -> str:
        return self.title or "New chat"

    @property
    def group_name(self) -> str:
        """The channel-layer group of every connection watching this conversation."""
        return f"conversation-{self.pk}"


class Message(models.Model):
    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        STOPPED = "stopped"
        ERROR = "error"
        TRUNCATED = "truncated"  # cut at the model's output limit; the text is kept
        FILTERED = "filtered"  # the provider's safety filter stopped the reply or the prompt
        INTERRUPTED = "interrupted"  # its server went away mid-reply; the text so far is kept

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    error = models.CharField(max_length=300, blank=True)
    detail = models.TextField(
        blank=True,
        help_text="What the provider said about how the reply ended (for the operator, never "
        "shown in the chat, API key removed).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "pk"]
        indexes = [models.Index(fields=["conversation", "created_at"])]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    @property
    def can_retry(self) -> bool:
        """A reply that ended short of a whole answer: the page offers Retry."""
        return self.role == self.Role.ASSISTANT and self.status in (
            self.Status.STOPPED,
            self.Status.ERROR,
            self.Status.TRUNCATED,
            self.Status.FILTERED,
            self.Status.INTERRUPTED,
        )

    @property
    def dom_id(self) -> str:
        return f"message-{self.pk}"
