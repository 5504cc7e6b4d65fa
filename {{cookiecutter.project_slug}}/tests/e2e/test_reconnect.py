"""The server goes away mid-reply and comes back: the page carries on by itself."""

import pytest
from playwright.sync_api import expect

from .chat import final_text, send, sign_up, transcript, wait_connected, wait_finished

pytestmark = pytest.mark.e2e

COMPLETE_TURN = ["message user complete", "message assistant complete"]
# The demo model echoes the message: a long one makes a reply long enough to interrupt.
BEFORE = "Before the restart. " + "This reply will be cut short by a restart. " * 4


def test_the_page_reconnects_after_a_server_restart_and_loses_nothing(browsing, server):
    page = browsing.page()
    sign_up(page)
    interrupted = send(page, BEFORE)
    expect(page.locator(f"#{interrupted}-text")).not_to_be_empty()
    page.evaluate("window.e2eSamePage = true")

    server.stop()  # mid-reply, as a deploy would: SIGTERM
    try:
        expect(page.locator(".connection-lost")).to_be_visible()
        # Sent while the server is down: htmx holds it until the socket is back.
        box = page.locator("#composer textarea")
        box.fill("During the outage")
        box.press("Enter")
        page.wait_for_timeout(300)
        expect(box).to_have_value("During the outage")
        expect(page.locator("#composer-status")).to_contain_text("You are offline")
    finally:
        server.start()

    # Back within a few seconds of the server (chat.js caps htmx's reconnect backoff at 5 s).
    wait_connected(page, timeout=15)
    expect(page.locator(".connection-lost")).to_be_hidden()
    assert page.evaluate("window.e2eSamePage === true"), "the page was reloaded"

    # The interrupted reply shows how it ended, without a reload: stopped, text kept.
    expect(page.locator(f"#{interrupted}")).to_have_class("message assistant stopped")
    assert final_text(page, interrupted)

    # The held message goes out once, and gets its reply.
    expect(page.locator("#messages article.message.user")).to_have_count(2)
    expect(box).to_have_value("")
    during = page.locator("#messages article.message.assistant").nth(1).get_attribute("id")
    wait_finished(page, during)
    assert "You said: During the outage" in final_text(page, during)

    after = send(page, "After the restart")
    wait_finished(page, after)
    text = final_text(page, after)
    assert "You said: After the restart" in text
    assert f"Your first message: {BEFORE.strip()}" in text
    assert "Your previous message: During the outage" in text

    live = transcript(page)
    assert [classes for classes, _ in live] == [
        "message user complete",
        "message assistant stopped",
        *COMPLETE_TURN * 2,
    ]
    page.reload()
    wait_connected(page)
    assert transcript(page) == live
