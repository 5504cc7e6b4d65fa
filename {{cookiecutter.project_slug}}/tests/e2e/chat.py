"""What a person does on the chat page, and what the tests read back from it."""

import email
import re
import time
import uuid
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

from playwright.sync_api import Page, expect

PASSWORD = "a-long-e2e-password-4217"
STREAMING = re.compile(r"\bstreaming\b")


# Where the server under test writes the mails it sends (set by the server fixture).
mailbox: Path | None = None


def link_mailed_to(address: str, path: str) -> str:
    """The newest link to ``path`` in a mail the server sent to ``address``.

    Django's file backend writes each batch of mails to a file of its own, one message after
    another, each followed by a line of dashes.
    """
    assert mailbox is not None, "the server fixture sets chat.mailbox"
    files = sorted(mailbox.glob("*.log"), key=lambda file: file.stat().st_mtime, reverse=True)
    for file in files:
        for raw in reversed(file.read_text().split("\n" + "-" * 79 + "\n")):
            mail = email.message_from_string(raw.strip())
            if mail["To"] != address:
                continue
            body = mail.get_payload(decode=True).decode(mail.get_content_charset() or "utf-8")
            if found := re.search(rf"https?://[^/\s]+({re.escape(path)}\S+/)", body):
                return found.group(1)
    raise AssertionError(f"no mail to {address} with a link to {path} in {mailbox}")


def sign_up(page: Page, username: str | None = None) -> str:
    """Create an account through the sign-up form and the mailed verification link; lands
    on a connected chat page."""
    username = username or f"user-{uuid.uuid4().hex[:10]}"
    email = f"{username}@example.com"
    page.goto("/accounts/signup/")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Username").fill(username)
    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_label("Password (again)").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/accounts/confirm-email/$"))
    page.goto(link_mailed_to(email, "/accounts/confirm-email/"))
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    wait_connected(page)
    return username


def wait_connected(page: Page, timeout: float = 10) -> None:
    """chat.js marks the page when htmx's WebSocket opens ("back" after a reconnect)."""
    expect(page.locator("body")).to_have_attribute(
        "data-connection", re.compile(r"^(open|back)$"), timeout=timeout * 1000
    )


def reply_ids(page: Page) -> list[str]:
    return page.locator("#messages article.message.assistant").evaluate_all(
        "articles => articles.map(article => article.id)"
    )


def send(page: Page, text: str) -> str:
    """Type a message and press Enter; returns the id of the reply's article."""
    before = reply_ids(page)
    box = page.locator("#composer textarea")
    box.fill(text)
    box.press("Enter")
    new = page.wait_for_function(
        """before => [...document.querySelectorAll("#messages article.message.assistant")]
            .map(article => article.id).find(id => id && !before.includes(id))""",
        arg=before,
    )
    return new.json_value()


def reply_state(page: Page, reply_id: str) -> dict:
    return page.evaluate(
        """id => {
            const article = document.getElementById(id);
            const text = article.querySelector(".text");
            return {
                streaming: text.classList.contains("streaming"),
                text: text.textContent,
                classes: article.className,
            };
        }""",
        reply_id,
    )


def watch_reply(
    page: Page,
    reply_id: str,
    on_state: Callable[[str], object] = lambda text: None,
    timeout: float = 30,
) -> list[str]:
    """Look at a streaming reply until it is finished; the distinct texts seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = reply_state(page, reply_id)
        if not state["streaming"]:
            return seen
        if state["text"] and (not seen or state["text"] != seen[-1]):
            seen.append(state["text"])
            on_state(state["text"])
        page.wait_for_timeout(25)
    raise AssertionError(f"{reply_id} still streaming after {timeout} s; seen: {seen}")


def grew(states: list[str]) -> bool:
    """Each state extends the one before: text only ever appended, never rewritten."""
    return all(later.startswith(earlier) for earlier, later in pairwise(states))


def wait_finished(page: Page, reply_id: str, timeout: float = 30) -> None:
    article = page.locator(f"#{reply_id}")
    expect(article).not_to_have_class(STREAMING, timeout=timeout * 1000)
    expect(article.locator(".text.markdown")).to_be_attached()


def final_text(page: Page, reply_id: str) -> str:
    return normalized(page.locator(f"#{reply_id} .text").inner_text())


def transcript(page: Page) -> list[tuple[str, str]]:
    """Every message on the page: (its classes, its visible text)."""
    rows = page.locator("#messages article.message").evaluate_all(
        "articles => articles.map(article => [article.className, article.innerText])"
    )
    return [(classes, normalized(text)) for classes, text in rows]


def normalized(text: str) -> str:
    return " ".join(text.split())
