"""Who may connect, and to what: only the owner, only from this site's pages."""

import asyncio

import pytest

from chat.models import Conversation

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_owner_connects(user, conversation, connect):
    assert (await connect(user, conversation.pk)).accepted


async def test_anonymous_connections_are_refused(conversation, connect):
    assert not (await connect(None, conversation.pk)).accepted


async def test_someone_elses_conversation_is_refused_exactly_like_a_missing_one(
    make_user, conversation, connect
):
    mallory = await asyncio.to_thread(make_user, "mallory")
    other = await connect(mallory, conversation.pk)
    missing = await connect(mallory, conversation.pk + 1000)

    assert not other.accepted
    assert other.close_code == missing.close_code


async def test_connections_from_another_origin_are_refused(user, conversation, connect):
    assert not (await connect(user, conversation.pk, origin=b"https://evil.example")).accepted


async def test_connections_without_an_origin_are_refused(user, conversation, connect):
    assert not (await connect(user, conversation.pk, origin=None)).accepted


def test_the_chat_page_needs_a_login(client, conversation):
    response = client.get(f"/chat/{conversation.pk}/")
    assert response.status_code == 302
    assert response.url.startswith("/accounts/login/")


def test_someone_elses_conversation_page_is_not_found(client, make_user, conversation):
    client.force_login(make_user("mallory"))
    assert client.get(f"/chat/{conversation.pk}/").status_code == 404


def test_the_sidebar_lists_only_your_own_conversations(client, make_user, user):
    Conversation.objects.create(owner=user, title="alice's secret plan")
    mallory = make_user("mallory")
    Conversation.objects.create(owner=mallory, title="mallory's chat")
    client.force_login(mallory)
    page = client.get("/", follow=True).content.decode()
    assert "mallory&#x27;s chat" in page
    assert "secret plan" not in page
