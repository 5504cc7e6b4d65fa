"""A reply streams into the page, survives a reload, and reaches every tab watching it."""

from pathlib import Path

import pytest
from playwright.sync_api import expect

from .chat import (
    grew,
    normalized,
    reply_state,
    send,
    sign_up,
    transcript,
    wait_connected,
    wait_finished,
    watch_reply,
)

pytestmark = pytest.mark.e2e


def test_a_new_user_signs_up_and_watches_a_reply_stream_in(browsing, results_dir: Path, request):
    page = browsing.page()
    sign_up(page, "ada")

    reply = send(page, "Hello, *streaming* world")

    # The user's bubble is there at once: before the reply has finished, as typed.
    question = page.locator("#messages article.message.user")
    expect(question).to_have_count(1)
    expect(question).to_have_text("Hello, *streaming* world")
    assert reply_state(page, reply)["streaming"]
    expect(page.locator("#composer textarea")).to_have_value("")
    # The sidebar lists the new conversation at once, as a list item like the others.
    expect(page.locator("#conversations > li > a[aria-current=page]")).to_have_text(
        "Hello, *streaming* world"
    )

    shots = []

    def screenshot_midway(text: str) -> None:
        if not shots and "You said: Hello" in text:
            shots.append(results_dir / f"{request.node.name}-streaming.png")
            page.screenshot(path=shots[0], animations="disabled")

    seen = watch_reply(page, reply, on_state=screenshot_midway)

    # It grew in front of the reader, each state extending the last. (The last state
    # seen may already be the whole text, so it does not count as an intermediate one.)
    intermediate = seen[:-1]
    assert len(intermediate) >= 3, seen
    assert grew(seen), seen
    assert any("You said: Hello" in text for text in seen), seen

    # Once complete, it is rendered as Markdown.
    markdown = page.locator(f"#{reply} .text.markdown")
    expect(page.locator(f"#{reply}")).to_have_class("message assistant complete")
    expect(markdown.locator("strong").first).to_have_text("Demo model")
    expect(markdown.locator("em")).to_have_text("streaming")
    expect(markdown.locator("code")).to_have_text(".env")
    expect(markdown).to_contain_text("You said: Hello, streaming world")
    expect(page.locator("#stop-form")).to_be_hidden()


def test_a_reload_keeps_the_conversation_and_the_model_sees_its_history(browsing):
    page = browsing.page()
    sign_up(page)
    first = "My name is Ada Lovelace"
    wait_finished(page, send(page, first))
    before = transcript(page)

    page.reload()
    wait_connected(page)

    assert transcript(page) == before
    assert [classes for classes, _ in before] == [
        "message user complete",
        "message assistant complete",
    ]
    current = page.locator("#conversations a[aria-current=page]")
    expect(current).to_have_text(first)
    assert page.url.endswith(current.get_attribute("href"))
    expect(page.locator("#conversation-title")).to_have_text(first)

    reply = send(page, "What is my name?")
    wait_finished(page, reply)
    text = normalized(page.locator(f"#{reply} .text").inner_text())
    assert "You said: What is my name?" in text
    assert "I can see 2 earlier messages in this conversation." in text
    assert f"Your first message: {first}" in text
    assert f"Your previous message: {first}" in text


def test_a_message_sent_in_one_tab_streams_live_into_both(browsing):
    sender = browsing.page()
    sign_up(sender)
    watcher = browsing.page(sender.context)
    watcher.goto(sender.url)
    wait_connected(watcher)
    # Each connection announces itself on the channel layer as it opens. A first turn ends
    # in both tabs whether or not the sender had heard of the watcher; by then it has.
    wait_finished(watcher, send(sender, "Hello"))

    # Long enough a reply for a few of the snapshots other tabs get (CHAT_FANOUT_INTERVAL).
    question = "Can both tabs see this? " + "Every word of it, as it is written. " * 3
    reply = send(sender, question)

    # The other tab shows the same turn, and watches the same reply grow.
    expect(watcher.locator("#messages article.message.user").nth(1)).to_have_text(question.strip())
    expect(watcher.locator(f"#{reply}")).to_be_attached()
    seen = watch_reply(watcher, reply)
    assert len(seen[:-1]) >= 3, seen
    assert grew(seen), seen

    wait_finished(sender, reply)
    wait_finished(watcher, reply)
    assert transcript(watcher) == transcript(sender)
    assert [classes for classes, _ in transcript(watcher)] == [
        "message user complete",
        "message assistant complete",
    ] * 2
    expect(watcher.locator("#stop-form")).to_be_hidden()
