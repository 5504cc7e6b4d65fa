from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from . import services
from .llm import get_chat_model
from .models import Conversation


@login_required
def home(request: HttpRequest) -> HttpResponse:
    latest = Conversation.objects.filter(owner=request.user).first()
    if latest is None:
        latest = Conversation.objects.create(owner=request.user)
    return redirect("chat:conversation", latest.pk)


@login_required
@require_POST
def new_conversation(request: HttpRequest) -> HttpResponse:
    """Reuse an untouched conversation rather than piling up empty ones."""
    empty = Conversation.objects.filter(owner=request.user, messages__isnull=True).first()
    conversation = empty or Conversation.objects.create(owner=request.user)
    return redirect("chat:conversation", conversation.pk)


@login_required
def conversation(request: HttpRequest, pk: int) -> HttpResponse:
    # Someone else's conversation is a 404, exactly like one that does not exist.
    current = get_object_or_404(Conversation, pk=pk, owner=request.user)
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": current,
            "conversations": services.conversations_of(request.user),
            "messages": current.messages.all(),
            "generating": services.generating(current) is not None,
            "model": get_chat_model(),
            "max_length": settings.CHAT_MAX_MESSAGE_LENGTH,
        },
    )
