"""Accounts by django-allauth: verified e-mail, throttled login, password reset by mail."""

import io
import re

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model

from config.settings import mailer

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-test-password"


@pytest.fixture
def member(db):
    """A user whose address is verified, as after a completed sign-up."""
    user = get_user_model().objects.create_user("member", "member@example.com", PASSWORD)
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user


def test_login_works_with_the_email_address_or_the_username(client, member):
    for login in ("member@example.com", "member"):
        response = client.post("/accounts/login/", {"login": login, "password": PASSWORD})
        assert response.status_code == 302 and response.url == "/", login
        client.post("/accounts/logout/")


def test_wrong_passwords_are_throttled_then_even_the_right_one_is_refused(client, member, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "login_failed": "3/5m/key"}
    for _ in range(3):
        response = client.post("/accounts/login/", {"login": "member", "password": "wrong"})
        assert "not correct" in response.content.decode()

    response = client.post("/accounts/login/", {"login": "member", "password": PASSWORD})

    assert response.status_code == 200  # not logged in
    assert "Too many failed login attempts" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_sign_ups_are_throttled_per_client_address(client, settings):
    settings.ACCOUNT_RATE_LIMITS = {**settings.ACCOUNT_RATE_LIMITS, "signup": "2/m/ip"}
    statuses = []
    for number in range(3):
        fields = {"email": f"user{number}@example.com", "username": f"user{number}"}
        fields |= {"password1": PASSWORD, "password2": PASSWORD}
        statuses.append(client.post("/accounts/signup/", fields).status_code)
        client.logout()

    assert statuses == [302, 302, 429]
    assert get_user_model().objects.count() == 2


def test_an_unverified_address_cannot_log_in_until_its_link_is_followed(client, mailoutbox):
    fields = {"email": "new@example.com", "username": "new"}
    client.post("/accounts/signup/", fields | {"password1": PASSWORD, "password2": PASSWORD})
    client.logout()

    response = client.post("/accounts/login/", {"login": "new", "password": PASSWORD})
    assert response.url == "/accounts/confirm-email/"  # a new mail is sent instead
    assert "_auth_user_id" not in client.session

    link = re.search(r"(/accounts/confirm-email/\S+/)", mailoutbox[-1].body).group(1)
    client.post(link)
    assert EmailAddress.objects.get(email="new@example.com").verified
    response = client.post("/accounts/login/", {"login": "new", "password": PASSWORD})
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_the_development_console_prints_a_sign_up_link_whole_on_one_line(client, settings):
    """The Quick start: sign up, copy the link from the devserver's console, open it."""
    console = io.StringIO()
    development = mailer("consolemail://")  # EMAIL_URL's default with DJANGO_DEBUG=true
    settings.MAILERS = {"default": development | {"OPTIONS": {"stream": console}}}
    fields = {"email": "quick@example.com", "username": "quick"}
    client.post("/accounts/signup/", fields | {"password1": PASSWORD, "password2": PASSWORD})

    (line,) = [line for line in console.getvalue().splitlines() if "/confirm-email/" in line]
    link = re.search(r"http://testserver(/accounts/confirm-email/\S+)", line).group(1)
    client.post(link)
    assert EmailAddress.objects.get(email="quick@example.com").verified


def test_the_login_page_links_to_a_password_reset_that_mails_a_working_link(
    client, member, mailoutbox
):
    login_page = client.get("/accounts/login/").content.decode()
    assert 'href="/accounts/password/reset/"' in login_page

    client.post("/accounts/password/reset/", {"email": "member@example.com"})
    (mail,) = mailoutbox
    assert mail.to == ["member@example.com"]
    link = re.search(r"(/accounts/password/reset/key/\S+/)", mail.body).group(1)
    form_url = client.get(link).url  # allauth moves the key into the session
    new = "a-brand-new-pass-phrase"
    client.post(form_url, {"password1": new, "password2": new})

    assert client.login(username="member", password=new)


@pytest.mark.parametrize(
    "path",
    [
        "/accounts/login/",
        "/accounts/signup/",
        "/accounts/password/reset/",
        "/accounts/password/reset/done/",
        "/accounts/confirm-email/",
    ],
)
def test_account_pages_use_the_sites_layout_and_no_inline_script(client, path):
    response = client.get(path)
    page = response.content.decode()

    assert response.status_code == 200
    assert '<main class="auth">' in page and "chat/chat.css" in page
    assert "style=" not in page
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page))
