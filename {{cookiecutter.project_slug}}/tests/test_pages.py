"""What a newcomer sees: sign up, land in a chat, everything served by the project itself."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from chat.models import Conversation

pytestmark = pytest.mark.django_db

PROJECT = Path(__file__).resolve().parent.parent


def test_signing_up_verifies_the_address_then_logs_in_and_lands_on_a_chat(client, mailoutbox):
    password = "a-long-pass-phrase"
    response = client.post(
        "/accounts/signup/",
        {
            "email": "newcomer@example.com",
            "username": "newcomer",
            "password1": password,
            "password2": password,
        },
        follow=True,
    )
    assert "Verify Your Email Address" in response.content.decode()
    assert client.get("/").url.startswith("/accounts/login/")  # not logged in yet

    (mail,) = mailoutbox
    assert mail.to == ["newcomer@example.com"]
    link = re.search(r"https?://[^/\s]+(/accounts/confirm-email/\S+/)", mail.body).group(1)
    response = client.post(link, follow=True)

    assert response.redirect_chain[-1][0].startswith("/chat/")
    assert Conversation.objects.filter(owner__username="newcomer").count() == 1
    assert 'id="composer"' in response.content.decode()


def test_the_page_says_when_the_demo_model_answers(client, user, conversation):
    client.force_login(user)
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "Demo model: offline, no API key configured" in page


def test_new_chat_reuses_an_untouched_conversation(client, user, conversation):
    client.force_login(user)
    first = client.post("/chat/new/")
    second = client.post("/chat/new/")
    assert first.url == second.url == f"/chat/{conversation.pk}/"


def test_htmx_and_its_websocket_extension_are_served_by_the_project(client, user, conversation):
    client.force_login(user)
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    scripts = re.findall(r'<script src="([^"]+)"', page)

    assert "/static/django_htmx/htmx-2.min.js" in scripts
    assert "/static/django_htmx/ext/hx-ws-2.min.js" in scripts
    assert all(src.startswith("/static/") for src in scripts)


def test_the_content_security_policy_allows_only_nonced_scripts_and_this_sites_websocket(
    client, user, conversation
):
    client.force_login(user)
    response = client.get(f"/chat/{conversation.pk}/")
    policy = response.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", policy).group(1)

    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "ws://localhost" in policy or "wss://localhost" in policy
    page = response.content.decode()
    assert all(f'nonce="{nonce}"' in tag for tag in re.findall(r"<script[^>]*>", page))


def test_production_settings_pass_djangos_deployment_checks():
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "x" * 60 + "-production-secret-key-for-the-check",
        "DJANGO_ALLOWED_HOSTS": "chat.example.com",
        "EMAIL_URL": "smtp+tls://mailer:secret@smtp.example.com:587",
        "PATH": "",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_page_names_a_favicon_the_project_serves(client, user, conversation):
    login = client.get("/accounts/login/").content.decode()
    client.force_login(user)
    chat = client.get(f"/chat/{conversation.pk}/").content.decode()
    for page in (login, chat):
        icon = re.search(r'<link rel="icon" href="/static/([^"]+)"', page).group(1)
        assert (PROJECT / "chat" / "static" / icon).is_file()


def test_a_new_conversation_greets_with_example_prompts(client, user, conversation):
    client.force_login(user)
    page = client.get(f"/chat/{conversation.pk}/").content.decode()
    assert "What can I help with?" in page
    assert len(re.findall(r'<button type="button" class="example" data-prompt="', page)) == 4
