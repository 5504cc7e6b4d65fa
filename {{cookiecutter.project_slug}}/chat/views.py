from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import aget_object_or_404, get_object_or_404, redirect, render
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails

from . import services
from .llm import get_chat_model
from .models import Conversation


class HtmxHttpRequest(HttpRequest):
    """A request as django-htmx's middleware leaves it (django-htmx docs, "Type checking")."""

    htmx: HtmxDetails


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
    services.settle(current)  # a reply whose server went away shows as interrupted
    return render(
        request,
        "chat/chat.html",
        {
            "conversation": current,
            "conversations": services.conversations_of(request.user),
            "current_pk": current.pk,
            "messages": current.messages.all(),
            "generating": services.generating(current) is not None,
            "model": get_chat_model(),
            "max_length": settings.CHAT_MAX_MESSAGE_LENGTH,
        },
    )


# The sidebar: rename, delete and search over htmx. Someone else's id is a 404, like a
# missing one.


class RenameForm(forms.Form):
    title = forms.CharField(max_length=Conversation._meta.get_field("title").max_length)


def current_pk(request: HtmxHttpRequest) -> int | None:
    """The conversation open on the page that made this htmx request, if any."""
    url = request.htmx.current_url_abs_path if request.htmx else None
    if not url:
        return None
    try:
        match = resolve(urlsplit(url).path)
    except Resolver404:
        return None
    return match.kwargs.get("pk") if match.view_name == "chat:conversation" else None


def conversation_item(request: HtmxHttpRequest, item: Conversation) -> HttpResponse:
    """The conversation's sidebar entry; its page's title too when it is the open one."""
    context = {"item": item, "current_pk": current_pk(request), "conversation": item}
    return render(request, "chat/_conversation_item_response.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def rename(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """GET: the inline form (or, with ?cancel, the entry again). POST: save the new title."""
    item = get_object_or_404(Conversation, pk=pk, owner=request.user)
    if request.method == "GET":
        if "cancel" in request.GET:
            return conversation_item(request, item)
        form = RenameForm(initial={"title": item.title})
        return render(request, "chat/_rename_form.html", {"item": item, "form": form})
    form = RenameForm(request.POST)
    if not form.is_valid():
        return render(request, "chat/_rename_form.html", {"item": item, "form": form}, status=422)
    item.title = form.cleaned_data["title"]
    item.save(update_fields=["title", "updated_at"])
    if not request.htmx:  # the form, posted before htmx took it over
        return redirect("chat:conversation", item.pk)
    return conversation_item(request, item)


@login_required
@require_POST
async def delete(request: HtmxHttpRequest, pk: int) -> HttpResponse:
    """Stop the reply in progress, then delete; leave the page if it showed the conversation.

    Async: waiting for the reply to stop must not hold the thread that sync code (the
    consumers' database calls among it) shares under ASGI.
    """
    item = await aget_object_or_404(Conversation, pk=pk, owner=await request.auser())
    was_open = current_pk(request) == item.pk
    await services.astop_reply(item)
    await item.adelete()
    if not request.htmx:
        return redirect("chat:home")
    if was_open:
        return HttpResponseClientRedirect(reverse("chat:home"))
    return HttpResponse("")  # the entry's outerHTML: removed


@login_required
@require_GET
def search(request: HtmxHttpRequest) -> HttpResponse:
    """The sidebar's list, narrowed to conversations matching ?q= in title or messages."""
    query = request.GET.get("q", "")[:200]
    results = services.search_conversations(request.user, query)
    context = {"conversations": results, "current_pk": current_pk(request), "query": query}
    return render(request, "chat/_conversation_list.html", context)
