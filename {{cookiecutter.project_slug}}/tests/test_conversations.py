"""Rename, delete and search conversations from the sidebar: htmx over HTTP, owner only."""

import asyncio
import json

import pytest
from asgiref.sync import ThreadSensitiveContext

from chat import services
from chat.models import Conversation, Message

from .conftest import LIVE, final_status, read_reply, read_until

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HTTP_HX_REQUEST": "true"}


def on_page(conversation: Conversation) -> dict[str, str]:
    """Headers of an htmx request made from this conversation's page."""
    return {**HTMX, "HTTP_HX_CURRENT_URL": f"http://testserver/chat/{conversation.pk}/"}


@pytest.fixture
def mallory(make_user):
    return make_user("mallory")


@pytest.fixture
def titled(user) -> Conversation:
    conversation = Conversation.objects.create(owner=user, title="Trip to Rome")
    conversation.messages.create(role="user", content="Plan a trip to Rome")
    conversation.messages.create(role="assistant", content="Day one: the Colosseum.")
    return conversation


def test_rename_shows_an_inline_form_then_saves_the_new_title(client, user, titled):
    client.force_login(user)

    form = client.get(f"/chat/{titled.pk}/rename/", **HTMX).content.decode()
    assert 'name="title" value="Trip to Rome"' in form

    saved = client.post(f"/chat/{titled.pk}/rename/", {"title": "  Rome in May  "}, **HTMX)
    assert saved.status_code == 200
    assert ">Rome in May</a>" in saved.content.decode()
    titled.refresh_from_db()
    assert titled.title == "Rome in May"


def test_renaming_the_open_conversation_updates_the_page_title_too(client, user, titled):
    client.force_login(user)
    page = client.post(f"/chat/{titled.pk}/rename/", {"title": "Rome"}, **on_page(titled))
    assert '<h1 id="conversation-title" hx-swap-oob="true">Rome</h1>' in page.content.decode()


def test_a_blank_title_is_refused_with_a_message_and_nothing_changes(client, user, titled):
    client.force_login(user)
    response = client.post(f"/chat/{titled.pk}/rename/", {"title": "   "}, **HTMX)
    assert response.status_code == 422
    assert 'role="alert"' in response.content.decode()
    titled.refresh_from_db()
    assert titled.title == "Trip to Rome"


def test_a_title_is_escaped_in_the_sidebar(client, user, titled):
    client.force_login(user)
    html = client.post(f"/chat/{titled.pk}/rename/", {"title": "<b hx-get=/x>"}, **HTMX)
    assert "&lt;b hx-get=/x&gt;" in html.content.decode()
    assert "<b hx-get" not in html.content.decode()


def test_delete_removes_the_conversation_and_its_messages(client, user, titled, conversation):
    client.force_login(user)
    response = client.post(f"/chat/{titled.pk}/delete/", **on_page(conversation))
    assert response.status_code == 200
    assert response.content == b""  # the sidebar entry is swapped out
    assert not Conversation.objects.filter(pk=titled.pk).exists()
    assert not Message.objects.filter(conversation_id=titled.pk).exists()


def test_deleting_the_open_conversation_sends_the_page_home(client, user, titled):
    client.force_login(user)
    response = client.post(f"/chat/{titled.pk}/delete/", **on_page(titled))
    assert response.headers["HX-Redirect"] == "/"


async def test_delete_stops_the_reply_in_progress_first(
    user, conversation, connect, scripted, async_client
):
    model = scripted([f"w{i} " for i in range(500)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "write forever"}))
    await read_until(socket, LIVE)  # the reply is streaming
    await async_client.aforce_login(user)

    # A request's sync code gets a thread of its own, as Django's ASGIHandler gives it.
    async with ThreadSensitiveContext():
        response = await async_client.post(
            f"/chat/{conversation.pk}/delete/", headers={"HX-Request": "true"}
        )

    assert response.status_code == 200
    assert final_status(await read_reply(socket)) == "stopped"  # stopped before the delete
    assert await asyncio.to_thread(model.closed.wait, 5)
    assert model.yielded < 100
    assert not await Conversation.objects.filter(pk=conversation.pk).aexists()
    assert not await Message.objects.filter(conversation_id=conversation.pk).aexists()


def test_search_finds_conversations_by_title_and_by_message_content(client, user, titled):
    other = Conversation.objects.create(owner=user, title="Groceries")
    other.messages.create(role="user", content="milk, eggs")
    client.force_login(user)

    by_title = client.get("/chat/search/", {"q": "rome"}, **HTMX).content.decode()
    by_content = client.get("/chat/search/", {"q": "COLOSSEUM"}, **HTMX).content.decode()
    by_other = client.get("/chat/search/", {"q": "eggs"}, **HTMX).content.decode()
    nothing = client.get("/chat/search/", {"q": "zebra"}, **HTMX).content.decode()
    everything = client.get("/chat/search/", {"q": ""}, **HTMX).content.decode()

    assert "Trip to Rome" in by_title and "Groceries" not in by_title
    assert "Trip to Rome" in by_content and "Groceries" not in by_content
    assert "Groceries" in by_other and "Trip to Rome" not in by_other
    assert "No conversation mentions “zebra”." in nothing
    assert "Trip to Rome" in everything and "Groceries" in everything


def test_search_never_shows_someone_elses_conversations(client, titled, mallory):
    client.force_login(mallory)
    found = client.get("/chat/search/", {"q": "Rome"}, **HTMX).content.decode()
    assert "Trip to Rome" not in found


@pytest.mark.parametrize(
    ("method", "path"),
    [("get", "/chat/{}/rename/"), ("post", "/chat/{}/rename/"), ("post", "/chat/{}/delete/")],
    ids=["rename form", "rename", "delete"],
)
def test_someone_elses_conversation_is_a_404_like_a_missing_one(
    client, titled, mallory, method, path
):
    client.force_login(mallory)
    theirs = getattr(client, method)(path.format(titled.pk), {"title": "mine now"}, **HTMX)
    missing = getattr(client, method)(path.format(987654), {"title": "mine now"}, **HTMX)

    assert theirs.status_code == missing.status_code == 404
    titled.refresh_from_db()
    assert titled.title == "Trip to Rome"


def test_the_sidebar_needs_a_login_and_changes_need_post(client, user, titled):
    assert client.get("/chat/search/", {"q": "Rome"}).status_code == 302
    client.force_login(user)
    assert client.get(f"/chat/{titled.pk}/delete/").status_code == 405
    assert Conversation.objects.filter(pk=titled.pk).exists()


async def test_stopping_a_conversation_with_no_reply_in_progress_returns_at_once(titled):
    assert await services.astop_reply(titled, wait=0) is True


def test_rename_works_without_htmx_too(client, user, titled):
    client.force_login(user)
    response = client.post(f"/chat/{titled.pk}/rename/", {"title": "Plain form"})
    assert response.status_code == 302
    assert response.url == f"/chat/{titled.pk}/"
    titled.refresh_from_db()
    assert titled.title == "Plain form"
