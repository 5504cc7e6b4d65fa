"""Bad frames get a clear error; the connection stays usable and nothing is stored."""

import json

import pytest

from chat.models import Conversation, Message

from .conftest import LIVE, final_status, read_reply, read_until

pytestmark = pytest.mark.django_db(transaction=True)

NOTICE = 'id="composer-status" class="composer-status error" role="alert"'


async def assert_still_usable(socket, conversation):
    await socket.send_to(json.dumps({"message": "a good message"}))
    await socket.receive_from(timeout=5)
    assert final_status(await read_reply(socket)) == "complete"


@pytest.mark.parametrize(
    ("frame", "explains"),
    [
        ("this is not json", "not valid JSON"),
        ('["a", "list"]', "JSON object"),
        ("42", "JSON object"),
        ("{}", "Type a message"),
        ('{"message": "   "}', "Type a message"),
        ('{"message": 7}', "Type a message"),
        ('{"message": "hi", "action": "dance"}', "Unknown action"),
        ('{"message": "hi", "conversation": "not-a-number"}', "not open on this page"),
    ],
    ids=["not-json", "list", "number", "no-message", "blank", "not-text", "action", "bad-id"],
)
async def test_a_bad_frame_gets_a_clear_error_and_changes_nothing(
    user, conversation, connect, frame, explains
):
    socket = await connect(user, conversation.pk)
    await socket.send_to(frame)
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and explains in notice
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    await assert_still_usable(socket, conversation)


async def test_a_binary_frame_gets_a_clear_error(user, conversation, connect):
    socket = await connect(user, conversation.pk)
    await socket.send_to(bytes_data=b"\x00\x01binary")
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "Binary frames" in notice
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    await assert_still_usable(socket, conversation)


async def test_a_message_over_the_length_limit_is_refused(user, conversation, connect, settings):
    settings.CHAT_MAX_MESSAGE_LENGTH = 50
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "x" * 51}))
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "the limit is 50" in notice
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    await assert_still_usable(socket, conversation)


async def test_naming_someone_elses_conversation_in_a_frame_reveals_nothing(
    user, conversation, connect, make_user
):
    import asyncio

    other = await Conversation.objects.acreate(
        owner=await asyncio.to_thread(make_user, "bob"), title="bob's secret"
    )
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "hi", "conversation": other.pk}))
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "secret" not in notice
    assert await Message.objects.acount() == 0
    await assert_still_usable(socket, conversation)


async def test_a_second_message_while_a_reply_streams_is_refused(
    user, conversation, connect, scripted
):
    model = scripted([f"w{i} " for i in range(30)], delay=0.02)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "first"}))
    await read_until(socket, LIVE)

    await socket.send_to(json.dumps({"message": "second"}))
    frames = await read_reply(socket)

    assert any(NOTICE in f and "still being written" in f for f in frames)
    assert final_status(frames) == "complete"
    questions = Message.objects.filter(conversation=conversation, role="user")
    assert [m.content async for m in questions] == ["first"]
    assert len(model.calls) == 1


async def test_sending_past_the_rate_limit_is_refused_before_the_model_is_called(
    user, conversation, connect, scripted, settings
):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    model = scripted(["ok"])
    socket = await connect(user, conversation.pk)
    for text in ("one", "two"):
        await socket.send_to(json.dumps({"message": text}))
        await read_reply(socket)

    await socket.send_to(json.dumps({"message": "three"}))
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "2 messages a minute" in notice
    assert len(model.calls) == 2
    assert await Message.objects.filter(role="user").acount() == 2


# Frames that once crashed the handler (RecursionError in json.loads, UnicodeEncodeError on
# insert, DataError on PostgreSQL) and dropped the socket without a close frame.
CRASHERS = [
    ("[" * 20_000, "nested too deeply"),
    (json.dumps({"message": "a lone \ud800 surrogate"}), "lone UTF-16 surrogate"),
    (json.dumps({"message": "a NUL \x00 character"}), "NUL character"),
]


@pytest.mark.postgres
@pytest.mark.parametrize(("frame", "explains"), CRASHERS, ids=["nesting", "surrogate", "nul"])
async def test_a_frame_that_once_crashed_the_handler_gets_a_clear_error(
    user, conversation, connect, frame, explains
):
    socket = await connect(user, conversation.pk)
    await socket.send_to(frame)
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and explains in notice
    assert await Message.objects.filter(conversation=conversation).acount() == 0
    await assert_still_usable(socket, conversation)


@pytest.mark.postgres
@pytest.mark.parametrize(("frame", "explains"), CRASHERS, ids=["nesting", "surrogate", "nul"])
async def test_a_bad_frame_during_a_reply_leaves_the_reply_streaming_to_this_socket(
    user, conversation, connect, scripted, frame, explains
):
    scripted([f"w{i} " for i in range(20)], delay=0.02)
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "first"}))
    await read_until(socket, LIVE)

    await socket.send_to(frame)
    frames = await read_reply(socket)

    assert any(NOTICE in f and explains in f for f in frames)
    assert final_status(frames) == "complete"
    assert "w19" in "".join(frames)


async def test_an_unexpected_error_in_a_handler_is_logged_and_answered(
    user, conversation, connect, monkeypatch, caplog
):
    from chat import limits

    def broken(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(limits, "replies_asked", broken)  # while a turn starts
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "hello"}))
    notice = await socket.receive_from(timeout=5)

    assert NOTICE in notice and "Something went wrong with that request" in notice
    assert "a bug" not in notice
    assert any("failed" in r.message and r.exc_info for r in caplog.records)
    monkeypatch.undo()
    await assert_still_usable(socket, conversation)


@pytest.mark.postgres
async def test_characters_the_database_refuses_in_a_reply_are_replaced_not_fatal(
    user, conversation, connect, scripted
):
    scripted(["a NUL \x00 ", "and a lone \ud800 surrogate"])
    socket = await connect(user, conversation.pk)
    await socket.send_to(json.dumps({"message": "say something odd"}))
    frames = await read_reply(socket)

    assert final_status(frames) == "complete"
    reply = await Message.objects.aget(conversation=conversation, role="assistant")
    assert reply.content == "a NUL \ufffd and a lone \ufffd surrogate"
