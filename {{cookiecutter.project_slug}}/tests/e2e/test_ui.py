"""What a reader compares with other chat apps: formatting, phone, dark mode, the composer,
the sidebar and accessibility."""

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Page, expect

from .chat import (
    MARKDOWN_MESSAGE,
    RECORD_LIVE,
    axe_violations,
    final_text,
    overflows_horizontally,
    send,
    sign_up,
    wait_connected,
    wait_finished,
)
from .conftest import PHONE

pytestmark = pytest.mark.e2e

LONG_MESSAGE = "Tell me a long story. " + "Once upon a time there was a stream. " * 6


def background_is_dark(page: Page) -> bool:
    """The page's background colour, by its perceived lightness."""
    rgb = page.evaluate("() => getComputedStyle(document.documentElement).backgroundColor")
    red, green, blue = (int(part) for part in re.findall(r"\d+", rgb)[:3])
    return 0.299 * red + 0.587 * green + 0.114 * blue < 128


def test_a_reply_is_formatted_while_it_streams_and_ends_without_a_jump(browsing, results_dir):
    context = browsing.visitor()
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = browsing.page(context)
    sign_up(page)
    page.evaluate(RECORD_LIVE)

    reply = send(page, MARKDOWN_MESSAGE)
    wait_finished(page, reply)

    live = page.evaluate("id => window.e2eLive[id + '-text']", reply)
    # Headings, bold, lists, highlighted code and tables showed before the reply ended...
    assert set(live["formatted"]) == {
        "h2",
        "strong",
        "li",
        ".code-block .highlight span",
        "table",
    }, live["formatted"]
    # ...and the last frame was already what the finished reply shows: nothing moves.
    finished = page.locator(f"#{reply} .text.markdown")
    assert finished.inner_html() == live["last"]

    # Code: highlighted by class, labelled with its language, and copied with one click.
    block = finished.locator(".code-block")
    expect(block.locator(".code-language")).to_have_text("python")
    expect(block.locator("code .k").first).to_have_text("def")
    block.get_by_role("button", name="Copy").click()
    expect(block.get_by_role("button", name="Copied")).to_be_visible()
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == 'def greet(name):\n    return "Hi " + name\n'

    # Tables have borders; an image is a link, never fetched from another origin.
    cell = finished.locator("td").first
    assert cell.evaluate("td => getComputedStyle(td).borderTopStyle") == "solid"
    expect(finished.locator("td.align-right").first).to_have_text("web")
    expect(finished.locator("img")).to_have_count(0)
    expect(finished.locator("a.image-link")).to_have_attribute(
        "href", "https://example.com/pixel.png"
    )
    assert not [url for url in browsing.requests if "example.com" in url]
    page.screenshot(path=results_dir / "desktop.png", animations="disabled")


def test_on_a_phone_a_drawer_holds_new_chat_the_list_and_log_out_and_nothing_overflows(
    browsing, results_dir
):
    page = browsing.page(browsing.visitor(viewport=PHONE, has_touch=True, is_mobile=True))
    page.goto("/accounts/signup/")
    assert not overflows_horizontally(page)
    sign_up(page)
    sidebar = page.locator("#sidebar")
    expect(sidebar).to_be_hidden()

    reply = send(page, MARKDOWN_MESSAGE)
    wait_finished(page, reply)
    assert not overflows_horizontally(page)
    # Wide content scrolls inside its own block, not the page.
    for wide in (".code-block pre", "table"):
        box = page.locator(f"#{reply} {wide}").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, wide
    # The composer sits at the bottom of the screen.
    composer = page.locator("#composer").bounding_box()
    assert PHONE["height"] - (composer["y"] + composer["height"]) < 40, composer
    page.screenshot(path=results_dir / "phone.png", animations="disabled")

    menu = page.get_by_role("button", name="Open conversations")
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(sidebar.get_by_role("button", name="New chat")).to_be_visible()
    expect(sidebar.locator("#conversations a[aria-current=page]")).to_be_visible()
    expect(sidebar.get_by_role("button", name="Log out")).to_be_visible()
    assert not overflows_horizontally(page)
    page.screenshot(path=results_dir / "phone-drawer.png", animations="disabled")

    page.keyboard.press("Escape")
    expect(sidebar).to_be_hidden()
    menu.click()
    sidebar.get_by_role("button", name="New chat").click()
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    wait_connected(page)
    expect(page.locator(".empty-state")).to_be_visible()
    menu.click()
    sidebar.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))


def test_dark_mode_follows_the_system_and_a_chosen_theme_persists(browsing, results_dir):
    page = browsing.page(browsing.visitor(color_scheme="dark"))
    sign_up(page)
    assert background_is_dark(page)
    toggle = page.get_by_role("button", name="Dark theme")
    expect(toggle).to_have_attribute("aria-pressed", "true")

    # The empty state greets, and its examples fill the composer, ready to send.
    empty = page.locator(".empty-state")
    expect(empty.get_by_role("heading")).to_have_text("What can I help with?")
    page.screenshot(path=results_dir / "dark-empty.png", animations="disabled")
    example = empty.locator("button.example").nth(1)
    prompt = example.get_attribute("data-prompt")
    example.click()
    box = page.locator("#composer textarea")
    expect(box).to_have_value(prompt)
    expect(box).to_be_focused()
    box.press("Enter")
    reply = page.locator("#messages article.message.assistant").first
    wait_finished(page, reply.get_attribute("id"))
    expect(empty).to_be_hidden()

    toggle.click()  # the reader picks light, against the system's dark
    expect(toggle).to_have_attribute("aria-pressed", "false")
    assert not background_is_dark(page)
    page.reload()
    wait_connected(page)
    assert not background_is_dark(page), "the chosen theme did not persist"
    expect(page.get_by_role("button", name="Dark theme")).to_have_attribute("aria-pressed", "false")


def test_a_refused_message_stays_in_the_composer_with_the_reason_next_to_it(browsing):
    page = browsing.page()
    sign_up(page)
    box = page.locator("#composer textarea")
    status = page.locator("#composer-status")

    first = send(page, LONG_MESSAGE)
    expect(box).to_be_focused()  # focus is back in the composer after sending
    expect(box).to_have_value("")
    box.fill("A second thought, typed while the reply streams")
    box.press("Enter")

    expect(status).to_have_text("A reply is still being written. Wait for it, or press Stop.")
    expect(box).to_have_value("A second thought, typed while the reply streams")
    expect(page.locator("#messages article.message.user")).to_have_count(1)

    # Screen readers hear the reply once it is finished, not every frame of it.
    assert page.locator("#messages").get_attribute("aria-live") is None
    wait_finished(page, first)
    expect(page.locator("#announcer")).to_contain_text("You said: Tell me a long story.")
    assert page.locator("#announcer").get_attribute("role") == "status"

    box.press("Enter")  # the kept text, sent now that the reply is done
    expect(page.locator("#messages article.message.user")).to_have_count(2)
    expect(box).to_have_value("")
    expect(status).to_be_empty()


def test_conversations_are_renamed_searched_and_deleted_inline_by_their_owner(browsing, server):
    page = browsing.page()
    sign_up(page)
    wait_finished(page, send(page, "Trip to Rome"))
    rome = urlsplit(page.url).path
    page.get_by_role("button", name="New chat").click()
    expect(page).not_to_have_url(re.compile(re.escape(rome) + "$"))
    wait_connected(page)
    wait_finished(page, send(page, "Groceries for the week"))
    entries = page.locator("#conversations > li.conversation")
    expect(entries).to_have_count(2)

    # Search: by title, by what was said, and back to everything.
    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("rome")
    expect(entries).to_have_count(1)
    expect(entries).to_have_text("Trip to Rome")
    search.fill("echo what I was given")  # only in the replies
    expect(entries).to_have_count(2)
    search.fill("zebra")
    expect(page.locator("#conversations")).to_have_text("No conversation mentions “zebra”.")
    search.fill("")
    expect(entries).to_have_count(2)

    # Rename inline: Escape cancels, Enter saves; the open conversation's header follows.
    page.get_by_role("button", name="Rename Trip to Rome").click()
    field = page.get_by_role("textbox", name="New title for Trip to Rome")
    expect(field).to_be_focused()
    field.press("Escape")
    expect(page.get_by_role("link", name="Trip to Rome")).to_be_visible()
    page.get_by_role("button", name="Rename Groceries for the week").click()
    page.get_by_role("textbox", name="New title for Groceries for the week").fill("Shopping")
    page.keyboard.press("Enter")
    expect(page.locator("#conversations a[aria-current=page]")).to_have_text("Shopping")
    expect(page.locator("#conversation-title")).to_have_text("Shopping")

    # Delete, with confirmation, while a reply streams: it stops first, then the page
    # leaves the deleted conversation.
    shopping = urlsplit(page.url).path
    log_before = len(server.log_path.read_text(errors="replace"))
    send(page, LONG_MESSAGE)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete Shopping").click()
    expect(page).to_have_url(re.compile(re.escape(rome) + "$"))
    wait_connected(page)
    expect(entries).to_have_count(1)
    expect(entries).to_have_text("Trip to Rome")
    assert page.goto(shopping).status == 404
    page.wait_for_timeout(300)  # time for a reply that was not stopped to fail
    assert "Traceback" not in server.log_path.read_text(errors="replace")[log_before:]


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_axe_finds_no_serious_or_critical_violations_on_login_sign_up_and_chat(
    browsing, axe_core: Path, scheme: str, results_dir: Path
):
    # Playwright adds axe as an inline script, which the page's CSP rightly refuses: this
    # context alone lets it in.
    page = browsing.page(browsing.visitor(color_scheme=scheme, bypass_csp=True))
    found = {}
    page.goto("/accounts/login/")
    found["login"] = axe_violations(page, axe_core)
    page.goto("/accounts/signup/")
    found["sign-up"] = axe_violations(page, axe_core)
    sign_up(page)
    found["empty chat"] = axe_violations(page, axe_core)
    reply = send(page, MARKDOWN_MESSAGE)
    wait_finished(page, reply)
    assert "You said: Format check" in final_text(page, reply)
    found["chat"] = axe_violations(page, axe_core)
    page.screenshot(path=results_dir / f"{scheme}.png", animations="disabled")
    page.get_by_role("button", name="Rename Format check").click()
    found["rename form"] = axe_violations(page, axe_core)

    assert found == dict.fromkeys(found, []), found
