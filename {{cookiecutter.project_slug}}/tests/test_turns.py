"""Turns started and replies ended together (services.begin_turns, finish_replies): each gets
the checks and the outcome it would get alone."""

from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import OperationalError, connection
from django.test import Client
from django.utils import timezone

from chat import limits, services
from chat.models import Conversation, Message

pytestmark = pytest.mark.postgres

POISON = "poison"  # the database refuses a message with this text (refuse_poison)


@pytest.fixture
def refuse_poison(transactional_db):
    """A trigger that makes the database refuse to store a message whose text is POISON."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN "
                f"IF NEW.content = '{POISON}' THEN RAISE EXCEPTION 'refused'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(
                "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON chat_message "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        else:
            for event in ("INSERT", "UPDATE"):
                cursor.execute(
                    f"CREATE TRIGGER refuse_poison_{event} BEFORE {event} ON chat_message "
                    f"WHEN NEW.content = '{POISON}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
    yield
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TRIGGER refuse_poison ON chat_message")
            cursor.execute("DROP FUNCTION refuse_poison()")
        else:
            for event in ("INSERT", "UPDATE"):
                cursor.execute(f"DROP TRIGGER refuse_poison_{event}")


def scope_of(user, client: Client | None = None) -> dict:
    """A socket's scope: its user, and the session it opened with."""
    if client is None:
        client = Client()
        client.force_login(user)
    return {"user": user, "session": SessionStore(client.cookies["sessionid"].value)}


def stored(conversation) -> list[tuple[str, str, str]]:
    return list(conversation.messages.values_list("role", "content", "status"))


def test_a_batch_of_turns_gives_each_its_own_outcome(make_user, settings, refuse_poison):
    settings.CHAT_MESSAGES_PER_MINUTE = 1
    ann, bob, cy, dee, eve = (make_user(name) for name in ("ann", "bob", "cy", "dee", "eve"))
    over_limit, generating, fine, refused, signed_out = (
        Conversation.objects.create(owner=user) for user in (ann, bob, cy, dee, eve)
    )
    Message.objects.create(  # ann's one reply of the minute, in another conversation
        conversation=Conversation.objects.create(owner=ann), role=Message.Role.ASSISTANT
    )
    generating.messages.create(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
    client = Client()
    client.force_login(eve)
    eve_scope = scope_of(eve, client)
    client.logout()

    outcomes = services.begin_turns(
        [
            services.NewTurn(over_limit, "Hello", scope_of(ann)),
            services.NewTurn(generating, "Hello", scope_of(bob)),
            services.NewTurn(fine, "Hello", scope_of(cy)),
            services.NewTurn(refused, POISON, scope_of(dee)),
            services.NewTurn(signed_out, "Hello", eve_scope),
        ]
    )

    assert isinstance(outcomes[0], services.Refused)
    assert "1 messages a minute" in str(outcomes[0])
    assert isinstance(outcomes[1], services.Refused) and str(outcomes[1]) == services.BUSY
    turn = outcomes[2]
    assert isinstance(turn, services.Turn)
    assert (turn.question.content, turn.reply.status) == ("Hello", Message.Status.STREAMING)
    assert [(m.role, m.content) for m in turn.history] == [("user", "Hello")]
    assert turn.reply.conversation.title == "Hello"
    assert isinstance(outcomes[3], services.DatabaseError)
    assert isinstance(outcomes[4], services.SignedOut)
    # Only the turn that passed is stored, and whole.
    assert stored(fine) == [("user", "Hello", "complete"), ("assistant", "", "streaming")]
    fine.refresh_from_db()
    assert fine.title == "Hello"
    for conversation in (over_limit, refused, signed_out):
        assert stored(conversation) == []
        conversation.refresh_from_db()
        assert conversation.title == ""
    assert stored(generating) == [("assistant", "", "streaming")]


def test_a_second_turn_on_a_conversation_in_the_same_batch_waits_for_the_first(user, conversation):
    first, second = services.begin_turns(
        [services.NewTurn(conversation, "One"), services.NewTurn(conversation, "Two")]
    )

    assert isinstance(first, services.Turn)
    assert isinstance(second, services.Refused) and str(second) == services.BUSY
    assert [m[1] for m in stored(conversation)] == ["One", ""]


def test_turns_of_one_user_in_the_same_batch_count_toward_the_rate_limit(user, settings):
    settings.CHAT_MESSAGES_PER_MINUTE = 2
    conversations = [Conversation.objects.create(owner=user) for _ in range(3)]

    outcomes = services.begin_turns([services.NewTurn(c, "Hi") for c in conversations])

    assert [type(outcome) for outcome in outcomes] == [
        services.Turn,
        services.Turn,
        services.Refused,
    ]
    assert Message.objects.filter(role=Message.Role.ASSISTANT).count() == 2


def test_a_reply_whose_writer_died_is_settled_and_a_new_turn_starts(user, conversation, settings):
    dead = conversation.messages.create(
        role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, content="Half"
    )
    long_ago = timezone.now() - timedelta(seconds=settings.CHAT_HEARTBEAT_TIMEOUT + 1)
    Message.objects.filter(pk=dead.pk).update(updated_at=long_ago)

    (turn,) = services.begin_turns([services.NewTurn(conversation, "Again")])

    assert isinstance(turn, services.Turn)
    dead.refresh_from_db()
    assert dead.status == Message.Status.INTERRUPTED


def test_a_deleted_conversation_fails_its_turn_alone(user):
    kept, deleted = (Conversation.objects.create(owner=user) for _ in range(2))
    Conversation.objects.filter(pk=deleted.pk).delete()

    ok, gone = services.begin_turns([services.NewTurn(kept, "Hi"), services.NewTurn(deleted, "Hi")])

    assert isinstance(ok, services.Turn)
    assert isinstance(gone, Conversation.DoesNotExist)


def test_a_database_that_fails_refuses_every_turn_and_stores_none(user, conversation, monkeypatch):
    other = Conversation.objects.create(owner=user)

    def lost(user_ids):
        Message.objects.create(conversation=conversation, role="user", content="half a write")
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(limits, "replies_asked", lost)
    outcomes = services.begin_turns(
        [services.NewTurn(conversation, "Hi"), services.NewTurn(other, "Hi")]
    )

    assert [str(outcome) for outcome in outcomes] == [services.NOT_SAVED] * 2
    assert all(isinstance(outcome, services.Refused) for outcome in outcomes)
    assert not Message.objects.exists()


def test_the_history_given_with_a_turn_is_what_model_input_reads(user, conversation, settings):
    settings.CHAT_HISTORY_BUDGET = 30
    for role, content, status in [
        ("user", "An old question, long enough to fall out", "complete"),
        ("assistant", "Old answer", "complete"),
        ("user", "Why?", "complete"),
        ("assistant", "Broken", "error"),
        ("user", "Why, again?", "complete"),
        ("assistant", "Short", "stopped"),
    ]:
        conversation.messages.create(role=role, content=content, status=status)

    (turn,) = services.begin_turns([services.NewTurn(conversation, "And now?")])

    assert turn.history == services.model_input(turn.reply)
    # Newest first until 30 characters are spent; the failed reply is left out.
    assert [m.content for m in turn.history] == ["Why?", "Why, again?", "Short", "And now?"]


def test_signed_in_all_agrees_with_signed_in(make_user):
    ann, bob, cy, dee = (make_user(name) for name in ("ann", "bob", "cy", "dee"))
    scopes = [scope_of(user) for user in (ann, bob, cy, dee)]
    bob.set_password("another-long-test-password")  # his other sessions end
    bob.save()
    cy.is_active = False
    cy.save()
    SessionStore(scopes[3]["session"].session_key).delete()  # dee logged out
    scopes.append({"user": ann, "session": None})  # no session at all

    expected = [services.signed_in(scope) for scope in scopes]

    assert expected == [True, False, False, False, False]
    assert services.signed_in_all(scopes) == expected


def test_replies_ended_together_are_each_stored_or_fail_alone(user, refuse_poison):
    conversations = [Conversation.objects.create(owner=user) for _ in range(3)]
    replies = [
        c.messages.create(role=Message.Role.ASSISTANT, status=Message.Status.STREAMING)
        for c in conversations
    ]

    outcomes = services.finish_replies(
        [
            services.Ending(replies[0], "A whole answer.", Message.Status.COMPLETE),
            services.Ending(replies[1], POISON, Message.Status.COMPLETE),
            services.Ending(replies[2], "  ", Message.Status.COMPLETE),
        ]
    )

    assert outcomes[0] is replies[0] and outcomes[2] is replies[2]
    assert isinstance(outcomes[1], services.DatabaseError)
    for reply in replies:
        reply.refresh_from_db()
    assert (replies[0].status, replies[0].content) == ("complete", "A whole answer.")
    assert replies[1].status == "streaming"  # soon shown as interrupted, as before
    assert (replies[2].status, replies[2].error) == ("error", services.EMPTY)
