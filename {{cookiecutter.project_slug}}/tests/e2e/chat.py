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


# Records, in the page, each text a streaming reply shows: every frame that arrives is seen,
# however busy the machine running the test is.
RECORD_STATES = """id => {
    const states = (window.e2eStates ??= {})[id] ??= [];
    const note = () => {
        const text = document.getElementById(id)?.querySelector(".text");
        if (!text || !text.classList.contains("streaming")) return;
        if (text.textContent && text.textContent !== states.at(-1)) states.push(text.textContent);
    };
    note();
    new MutationObserver(note).observe(
        document.getElementById("messages"), { childList: true, subtree: true, characterData: true }
    );
}"""


def watch_reply(
    page: Page,
    reply_id: str,
    on_state: Callable[[str], object] = lambda text: None,
    timeout: float = 30,
) -> list[str]:
    """Watch a streaming reply until it is finished; the distinct texts it showed on the way.

    on_state is called with some of them as the test sees them (for screenshots).
    """
    page.evaluate(RECORD_STATES, reply_id)
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        state = reply_state(page, reply_id)
        if not state["streaming"]:
            return page.evaluate("id => window.e2eStates[id]", reply_id)
        if state["text"] and state["text"] != last:
            last = state["text"]
            on_state(last)
        page.wait_for_timeout(25)
    seen = page.evaluate("id => window.e2eStates[id]", reply_id)
    raise AssertionError(f"{reply_id} still streaming after {timeout} s; seen: {seen}")


def grew(states: list[str]) -> bool:
    """Each state extends the one before, as a reader sees it.

    The reply is Markdown rendered as it streams, so "**bold" shows its asterisks until
    the closing ones arrive: emphasis and code marks, and line breaks, are not compared.
    """
    shown = [" ".join(state.replace("*", "").replace("`", "").split()) for state in states]
    return all(later.startswith(earlier) for earlier, later in pairwise(shown))


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


# Every construct the issue asks to see formatted while streaming, echoed by the demo model.
MARKDOWN_MESSAGE = """Format check

## A plan

- **bold** item
- second item

```python
def greet(name):
    return "Hi " + name
```

| Tool | Use |
|:--|--:|
| Django | web |
| htmx | swaps |

![pixel](https://example.com/pixel.png)"""

# Records, for each streaming reply, its HTML at every change and what it showed while
# streaming; window.e2eLive[id] then holds {last, formatted}.
RECORD_LIVE = """() => {
    const FORMATTED = ["h2", "strong", "li", ".code-block .highlight span", "table"];
    window.e2eLive = {};
    new MutationObserver(() => {
        for (const text of document.querySelectorAll("#messages .text.streaming")) {
            const seen = window.e2eLive[text.id] ??= {last: "", formatted: {}};
            seen.last = text.innerHTML;
            for (const selector of FORMATTED) {
                if (text.querySelector(selector)) seen.formatted[selector] = true;
            }
        }
    }).observe(
        document.getElementById("messages"),
        {childList: true, subtree: true, characterData: true},
    );
}"""


def overflows_horizontally(page: Page) -> bool:
    return page.evaluate(
        "() => document.documentElement.scrollWidth > document.documentElement.clientWidth"
    )


def axe_violations(page: Page, axe_core: Path) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now."""
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.add_script_tag(path=axe_core)
    results = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ["violations"]})).violations
            .filter(v => v.impact === "serious" || v.impact === "critical")
            .map(v => `${v.impact} ${v.id}: ${v.help} -> ` + v.nodes.slice(0, 3)
                .map(n => n.target.join(" ") + " " + n.failureSummary).join(" | "))"""
    )
    return results
