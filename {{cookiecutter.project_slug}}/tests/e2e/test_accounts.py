"""Signing up, verifying the address, logging out and in again, as a person does."""

import re

import pytest
from playwright.sync_api import expect

from .chat import PASSWORD, link_mailed_to, sign_up, wait_connected

pytestmark = pytest.mark.e2e


def test_sign_up_verify_log_out_and_log_in_again_by_email_address(browsing):
    page = browsing.page()
    username = sign_up(page)  # the form, the mailed link, the confirmation
    expect(page.locator("#composer textarea")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/$"))
    page.get_by_label("Login").fill(f"{username}@example.com")
    page.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()

    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
    wait_connected(page)


def test_a_forgotten_password_is_reset_through_the_mailed_link(browsing):
    page = browsing.page()
    username = sign_up(page)
    page.get_by_role("button", name="Log out").click()

    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("Email").fill(f"{username}@example.com")
    page.get_by_role("button", name="Reset My Password").click()
    expect(page.locator("main.auth")).to_contain_text("sent you an email")

    page.goto(link_mailed_to(f"{username}@example.com", "/accounts/password/reset/key/"))
    new = "a-fresh-e2e-password-9031"
    page.get_by_label(re.compile(r"^New Password:?$")).fill(new)
    page.get_by_label("New Password (again)").fill(new)
    page.get_by_role("button", name="Change Password").click()
    expect(page.locator("main.auth")).to_contain_text("password is now changed")

    page.goto("/accounts/login/")
    page.get_by_label("Login").fill(username)
    page.get_by_label(re.compile(r"^Password:?$")).fill(new)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/chat/\d+/$"))
