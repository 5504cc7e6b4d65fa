"""A chat turn end to end through the real ASGI stack: socket, consumer, database, model."""

import asyncio
import json
import re

import pytest

from chat.llm import ChatMessage, EndReason, IncompleteReply, ProviderError
from chat.models import Message

from .conftest import (
    FINISHED,
    LIVE,
    final_status,
    live_text,
    read_reply,
    read_until,
    wait_for_status,
)

pytestmark = pytest.mark.django_db(transaction=True)


def send(text: str, **fields) -> str:
    return json.dumps({"message": text, **fields})


async def messages_of(conversation) -> list[tuple[str, str, str]]:
    return [
        (m.role, m.content, m.status)
        async for m in Message.objects.filter(conversation=conversation).order_by("pk")
    ]


async def test_round_trip_stores_the_question_streams_the_reply_in_order_and_stores_it(
    user, conversation, connect, scripted
):
    model = scripted(["The ", "answer ", "is ", "**42**", "."], delay=0.01)
    socket = await connect(user, conversation.pk)

    await socket.send_to(send("What is the answer?"))
    turn = await socket.receive_from(timeout=5)
    frames = await read_reply(socket)

    assert "What is the answer?" in turn  # the user's bubble, at once
    assert 'class="message assistant streaming"' in turn  # the placeholder to stream into
    assert live_text(frames) == "The answer is 42."  # every piece, in order
    assert len(LIVE.findall("".join(frames))) >= 2  # streamed, not sent at the end
    assert "<strong>42</strong>" in frames[-2]  # formatted while it streams
    assert "<strong>42</strong>" in frames[-1]  # finished reply re-rendered as Markdown
    assert final_status(frames) == "complete"
    assert await messages_of(conversation) == [
        ("user", "What is the answer?", "complete"),
        ("assistant", "The answer is **42**.", "complete"),
    ]
    assert model.calls[0][-1].content == "What is the answer?"


async def test_question_is_stored_before_the_model_is_called(user, conversation, connect, scripted):
    def stored_messages():
        return list(conversation.messages.values_list("role", "content"))

    seen_at_start = []
    scripted(["ok"], on_start=lambda: seen_at_start.append(stored_messages()))
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("remember me"))
    await read_reply(socket)

    assert ("user", "remember me") in seen_at_start[0]


async def test_history_survives_a_reconnect_and_is_sent_to_the_model(
    user, conversation, connect, scripted
):
    model = scripted(["First reply."])
    first = await connect(user, conversation.pk)
    await first.send_to(send("My name is Ada."))
    first_reply = FINISHED.search((await read_reply(first))[-1]).group(1)
    await first.disconnect()

    second = await connect(user, conversation.pk)
    await second.send_to(send("What is my name?"))
    # The first reply's end, sent to the conversation's other tabs, may reach this one too.
    while FINISHED.search((await read_reply(second))[-1]).group(1) == first_reply:
        pass

    assert [(m.role, m.content) for m in model.calls[1]] == [
        ("user", "My name is Ada."),
        ("assistant", "First reply."),
        ("user", "What is my name?"),
    ]


async def test_history_sent_to_the_model_is_trimmed_to_the_budget(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_HISTORY_BUDGET = 30
    model = scripted(["x" * 20])
    socket = await connect(user, conversation.pk)
    for text in ["a" * 20, "b" * 5]:
        await socket.send_to(send(text))
        await read_reply(socket)

    assert [m.content for m in model.calls[1]] == ["x" * 20, "b" * 5]


async def test_a_second_connection_on_the_conversation_sees_the_reply_live_without_frames_twice(
    user, conversation, connect, scripted
):
    asker = await connect(user, conversation.pk)
    watcher = await connect(user, conversation.pk)
    # A first turn: its end reaches the watcher whether or not the asker has heard of it
    # yet, and by then it has (the watcher announced itself when it opened).
    scripted(["warm up"])
    await asker.send_to(send("first"))
    await read_reply(asker)
    await read_reply(watcher)

    scripted([f"piece{i} " for i in range(20)], delay=0.02)
    await asker.send_to(send("hello both"))
    asker_frames = [await asker.receive_from(timeout=5), *await read_reply(asker)]
    watcher_frames = await read_reply(watcher)
    watched = "".join(watcher_frames)

    assert "hello both" in watched  # the question appears in the other tab too
    assert LIVE.search(watched)  # and the reply grows there while it streams
    asker_live = [frame for frame in asker_frames if LIVE.search(frame)]
    assert len(set(asker_live)) == len(asker_live)  # nobody gets a frame twice (direct + layer)
    assert final_status(watcher_frames) == "complete"
    assert "piece19" in watcher_frames[-1]


async def test_stop_closes_the_model_stream_keeps_the_partial_reply_and_allows_the_next_message(
    user, conversation, connect, scripted
):
    model = scripted([f"w{i} " for i in range(500)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("write forever"))
    await read_until(socket, LIVE)  # the reply has started

    await socket.send_to(json.dumps({"action": "stop"}))
    frames = await read_reply(socket)

    assert model.closed.wait(timeout=5)
    assert model.yielded < 100
    assert final_status(frames) == "stopped"
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert reply.status == "stopped"
    assert reply.content.startswith("w0 ")

    scripted(["next answer"])
    await socket.send_to(send("and now?"))
    await socket.receive_from(timeout=5)
    assert final_status(await read_reply(socket)) == "complete"


async def test_a_reply_whose_tab_closed_stops_when_nobody_comes_back_within_the_grace(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_RESUME_GRACE = 0.5
    model = scripted([f"w{i} " for i in range(2000)], delay=0.01)  # 20 s if nothing stops it
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("write forever"))
    await read_until(socket, LIVE)

    await socket.disconnect()

    assert await asyncio.to_thread(model.closed.wait, 15)
    assert model.yielded < 1000
    reply = await wait_for_status(conversation, "stopped")
    assert reply.content.startswith("w0 ")


async def test_the_demo_model_answers_when_no_provider_is_configured(user, conversation, connect):
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("ping"))
    await socket.receive_from(timeout=5)
    frames = await read_reply(socket)

    assert "You said: ping" in live_text(frames)
    assert "Demo model" in frames[-1]


async def test_a_provider_failure_keeps_the_partial_reply_explains_and_offers_a_retry(
    user, conversation, connect, scripted, caplog
):
    scripted(["Half an ", "answer"], fail=ProviderError("The model provider broke off the reply."))
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("tell me"))
    frames = await read_reply(socket)

    assert final_status(frames) == "error"
    assert "broke off the reply" in frames[-1]
    assert 'name="action" value="retry"' in frames[-1]
    assert "failed at the provider" in caplog.text  # a line for the operator
    assert (await messages_of(conversation))[-1] == ("assistant", "Half an answer", "error")

    model = scripted(["A whole answer."])
    await socket.send_to(json.dumps({"action": "retry"}))
    frames = await read_reply(socket)

    assert final_status(frames) == "complete"
    assert [m.content for m in model.calls[0]] == ["tell me"]  # the failed reply is left out
    assert (await messages_of(conversation))[-1] == ("assistant", "A whole answer.", "complete")


async def test_a_reply_that_runs_past_the_time_limit_is_cut_off(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_GENERATION_TIMEOUT = 0.5
    model = scripted([f"w{i} " for i in range(500)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("never stop"))
    frames = await read_reply(socket)

    assert final_status(frames) == "error"
    assert "time limit" in frames[-1]
    assert await asyncio.to_thread(model.closed.wait, 5)
    assert model.yielded < 200


async def test_the_first_message_names_the_conversation_in_the_header_and_the_sidebar(
    user, conversation, connect
):
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("Plan a <trip> to Rome"))
    frames = [await socket.receive_from(timeout=5), *await read_reply(socket)]
    title = next(frame for frame in frames if 'id="conversation-title"' in frame)

    assert "Plan a &lt;trip&gt; to Rome</h1>" in title
    # htmx inserts the inside of the swapped element: the sidebar gets a whole list item.
    assert re.search(
        r'<ul hx-swap-oob="afterbegin:#conversations">\s*<li id="conversation-\d+"', title
    )
    await conversation.arefresh_from_db()
    assert conversation.title == "Plan a <trip> to Rome"


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (EndReason.LENGTH, "truncated"),
        (EndReason.FILTERED, "filtered"),
        (EndReason.BLOCKED, "filtered"),
        (EndReason.EMPTY, "error"),
    ],
)
async def test_a_reply_that_ended_short_keeps_its_status_and_a_retry_answers_afresh(
    reason, status, user, conversation, connect, scripted
):
    scripted(["Half an ", "answer"], fail=IncompleteReply("The reply was cut short.", reason))
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("tell me"))
    frames = await read_reply(socket)

    assert final_status(frames) == status
    assert "The reply was cut short." in frames[-1]
    assert 'name="action" value="retry"' in frames[-1]

    model = scripted(["Whole answer."])
    await socket.send_to(json.dumps({"action": "retry"}))
    retried = await read_reply(socket)

    assert final_status(retried) == "complete"
    assert model.calls == [[ChatMessage("user", "tell me")]]  # the short attempt is left out
    assert await messages_of(conversation) == [
        ("user", "tell me", "complete"),
        ("assistant", "Half an answer", status),
        ("assistant", "Whole answer.", "complete"),
    ]


async def test_a_stopped_reply_can_be_retried(user, conversation, connect, scripted):
    scripted([f"p{i} " for i in range(200)], delay=0.01)
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("tell me"))
    await read_until(socket, LIVE)
    await socket.send_to(json.dumps({"action": "stop"}))
    frames = await read_reply(socket)
    assert final_status(frames) == "stopped"
    assert 'name="action" value="retry"' in frames[-1]

    model = scripted(["Whole answer."])
    await socket.send_to(json.dumps({"action": "retry"}))

    assert final_status(await read_reply(socket)) == "complete"
    assert model.calls == [[ChatMessage("user", "tell me")]]


async def test_a_reply_without_any_text_is_never_stored_as_complete(
    user, conversation, connect, scripted
):
    scripted([])
    socket = await connect(user, conversation.pk)
    await socket.send_to(send("tell me"))
    frames = await read_reply(socket)

    assert final_status(frames) == "error"
    assert "The model returned no text." in frames[-1]
    assert 'name="action" value="retry"' in frames[-1]
    assert (await messages_of(conversation))[-1] == ("assistant", "", "error")
