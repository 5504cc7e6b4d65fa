"""Stop ends the reply being written, keeps what was written, and the chat goes on."""

import pytest
from playwright.sync_api import expect

from .chat import final_text, send, sign_up, wait_connected, wait_finished

pytestmark = pytest.mark.e2e

# The demo model echoes the message, so a long message makes a long reply to stop.
LONG_MESSAGE = "Tell me a long story. " + "Once upon a time there was a stream. " * 6


def test_stop_freezes_the_reply_marks_it_stopped_and_the_next_message_works(browsing):
    page = browsing.page()
    sign_up(page)
    reply = send(page, LONG_MESSAGE)
    expect(page.locator(f"#{reply}-text")).not_to_be_empty()

    page.locator("#stop-form").get_by_role("button", name="Stop").click()

    article = page.locator(f"#{reply}")
    expect(article).to_have_class("message assistant stopped")
    expect(article.locator(".note")).to_have_text("Stopped.")
    expect(page.locator("#stop-form")).to_be_hidden()
    frozen = final_text(page, reply)
    assert frozen
    assert "Configure a provider" not in frozen, "the reply ran to its end"
    page.wait_for_timeout(500)
    assert final_text(page, reply) == frozen

    # What was written is kept, marked stopped.
    page.reload()
    wait_connected(page)
    expect(article).to_have_class("message assistant stopped")
    assert final_text(page, reply) == frozen

    after = send(page, "Are you still there?")
    wait_finished(page, after)
    expect(page.locator(f"#{after}")).to_have_class("message assistant complete")
    assert "You said: Are you still there?" in final_text(page, after)
    expect(page.locator("#messages article.message.notice")).to_have_count(0)
