"""Hostile text shows as text, and one user's conversation stays theirs."""

import re
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from .chat import final_text, normalized, send, sign_up, wait_connected, wait_finished, watch_reply

pytestmark = pytest.mark.e2e

# Each part would do something if it reached the page as HTML: set a flag, or make a request.
# (The page's own htmx requests, the sidebar's, all go to /chat/.)
PAYLOAD = (
    "<img src=x onerror=document.body.dataset.pwned=1> "
    "<div hx-get=/e2e-pwned hx-trigger=load>htmx</div> "
    "<script>document.body.dataset.pwned=2</script>"
)
INJECTED_PATHS = ("/x", "/e2e-pwned")


def injected(page: Page) -> dict:
    return page.evaluate(
        """() => ({
            elements: [...document.querySelectorAll(
                "img, iframe, object, [onerror], script:not([src]), "
                + "[hx-get]:not([hx-get^='/chat/']), [hx-trigger]:not(input.search)"
            )].map(element => element.outerHTML),
            flag: document.body.dataset.pwned ?? null,
        })"""
    )


def test_html_in_a_message_and_in_its_reply_shows_as_text_and_runs_nothing(browsing):
    page = browsing.page()
    sign_up(page)

    reply = send(page, PAYLOAD)
    seen = watch_reply(page, reply)
    assert any("<img src=x" in text for text in seen), "the streamed chunks lost the tags"
    wait_finished(page, reply)

    def check() -> None:
        expect(page.locator("#messages article.message.user .text")).to_have_text(PAYLOAD)
        assert f"You said: {PAYLOAD}" in final_text(page, reply)
        expect(page.locator("#conversation-title")).to_have_text(PAYLOAD[:60])
        assert injected(page) == {"elements": [], "flag": None}

    check()
    page.reload()  # the stored history and the title, rendered by the view
    wait_connected(page)
    check()
    page.wait_for_timeout(300)  # time for anything that was triggered to make its request
    fired = [url for url in browsing.requests if urlsplit(url).path.endswith(INJECTED_PATHS)]
    assert fired == []


# Opens a socket to a conversation from the page itself, as a script of the user's would.
PROBE = """path => new Promise(resolve => {
    const socket = new WebSocket(`ws://${location.host}${path}`);
    const result = {opened: false, received: [], code: null};
    socket.onopen = () => {
        result.opened = true;
        socket.send(JSON.stringify({message: "let me in"}));
        setTimeout(() => socket.close(), 1500);
    };
    socket.onmessage = event => result.received.push(event.data);
    socket.onclose = event => { result.code = event.code; resolve(result); };
})"""


def test_another_user_can_neither_see_nor_open_the_first_users_conversation(browsing):
    alice = browsing.page()
    sign_up(alice)
    secret = "My secret plan for the weekend"
    wait_finished(alice, send(alice, secret))
    conversation = urlsplit(alice.url).path
    conversation_id = re.search(r"/chat/(\d+)/", conversation).group(1)

    mallory = browsing.page()  # another browser profile: her own session
    sign_up(mallory)
    assert urlsplit(mallory.url).path != conversation
    expect(mallory.locator("#conversations")).not_to_contain_text(secret)
    expect(mallory.locator("body")).not_to_contain_text(secret)

    # Her conversation's page is "not found", exactly like one that does not exist.
    response = mallory.goto(conversation)
    assert response.status == 404
    not_found = normalized(mallory.locator("body").inner_text())
    assert secret not in mallory.content()
    missing = mallory.goto("/chat/987654321/")
    assert missing.status == 404
    assert normalized(mallory.locator("body").inner_text()) == not_found

    # Nor does its socket open for her, from her own chat page.
    mallory.goto("/")
    wait_connected(mallory)
    probe = mallory.evaluate(PROBE, f"/ws/chat/{conversation_id}/")
    assert probe["opened"] is False, probe
    assert probe["received"] == []

    # Alice's page is unaffected and hers alone.
    expect(alice.locator("#messages article.message.user")).to_have_text(secret)
