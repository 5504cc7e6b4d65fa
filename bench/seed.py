"""Seeds a generated project for one benchmark run; runs with the project's own Python.

    python seed.py --runs 10,100,500 --out-dir DIR   # writes DIR/plan-0.json, plan-1.json, ...

One user (with a session) per chat, made once per database; fresh conversations per run.

Users are made in bulk with one shared password hash, and their sessions are written with
Django's own session engine, so the load client needs no login round trip per user (the
client still logs in once over HTTP, as user 0, to check the login page works). Every
conversation is new, so the demo model sees no history and every reply is the same.
Conversation ids start at a random offset: Redis pub/sub channels are shared by everyone
using that Redis server, and group names are made from conversation ids.
"""

import argparse
import json
import os
import random
import sys
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.getcwd())
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from allauth.account.models import EmailAddress  # noqa: E402
from chat.llm import ChatMessage  # noqa: E402
from chat.llm.demo import compose_reply, tokens  # noqa: E402
from chat.models import Conversation  # noqa: E402
from django.contrib.auth import (  # noqa: E402
    BACKEND_SESSION_KEY,
    HASH_SESSION_KEY,
    SESSION_KEY,
    get_user_model,
)
from django.contrib.auth.hashers import make_password  # noqa: E402
from django.contrib.sessions.backends.db import SessionStore  # noqa: E402
from django.contrib.sessions.models import Session  # noqa: E402
from django.db import transaction  # noqa: E402
from django.utils import timezone  # noqa: E402
from django.utils.crypto import get_random_string  # noqa: E402

PASSWORD = "bench-password-1234"
BACKEND = "django.contrib.auth.backends.ModelBackend"
WORDS = "lean fast chat load test each word four byte long runs here over time".split()  # noqa: SIM905


def username(index: int) -> str:
    return f"bench{index:05d}"


def words(count: int) -> str:
    """count words, in paragraphs of 40 as a model's reply has them (a long reply in one
    paragraph would be re-rendered whole at every frame of the live Markdown)."""
    return "".join(
        ("\n\n" if i % 40 == 0 else " ") * (i > 0) + WORDS[i % len(WORDS)] for i in range(count)
    )


def message_for(target: int) -> tuple[str, str, int]:
    """A message whose echo by the demo model is exactly `target` tokens, if one exists."""
    best = None
    for count in range(1, 4 * target):
        message = words(count)
        reply = compose_reply([ChatMessage(role="user", content=message)])
        n = len(tokens(reply))
        if best is None or abs(n - target) < abs(best[2] - target):
            best = (message, reply, n)
        if n >= target:
            break
    return best


def make_users(count: int) -> None:
    User = get_user_model()
    have = User.objects.filter(username__startswith="bench").count()
    if have >= count:
        return
    password = make_password(PASSWORD)
    users = User.objects.bulk_create(
        [
            User(username=username(i), email=f"{username(i)}@bench.invalid", password=password)
            for i in range(have, count)
        ]
    )
    # Verified addresses: allauth lets no one log in before verifying theirs.
    EmailAddress.objects.bulk_create(
        [EmailAddress(user=u, email=u.email, verified=True, primary=True) for u in users]
    )
    expire = timezone.now() + timedelta(days=1)
    sessions = []
    for user in users:
        data = {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: BACKEND,
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
        sessions.append(
            Session(
                session_key=get_random_string(32, "abcdefghijklmnopqrstuvwxyz0123456789"),
                session_data=SessionStore().encode(data),
                expire_date=expire,
            )
        )
    Session.objects.bulk_create(sessions)
    # The session key of each user, in user order, for the chats command.
    known = json.loads(keys_file().read_text()) if keys_file().exists() else []
    known += [s.session_key for s in sessions]
    keys_file().write_text(json.dumps(known))


def keys_file() -> Path:
    return Path(os.environ.get("BENCH_SESSION_KEYS", "bench-sessions.json"))


def make_plans(runs: list[int], tokens_target: int, out_dir: Path) -> None:
    """One plan file per run: its chats (conversation, session cookie), the message, the reply."""
    User = get_user_model()
    keys = json.loads(keys_file().read_text())
    users = list(User.objects.filter(username__startswith="bench").order_by("pk")[: len(keys)])
    message, reply, n = message_for(tokens_target)
    latest = Conversation.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    base = max(latest + 1, random.randrange(1_000_000, 900_000_000))
    out_dir.mkdir(parents=True, exist_ok=True)
    for run, count in enumerate(runs):
        # Chat 0 warms the server up; chats 1..count are the measured ones.
        with transaction.atomic():
            conversations = Conversation.objects.bulk_create(
                [Conversation(pk=base + i, owner=users[i % len(users)]) for i in range(count + 1)]
            )
        base += count + 1
        plan = {
            "chats": [
                {"conversation": c.pk, "cookie": keys[i % len(users)], "user": c.owner.username}
                for i, c in enumerate(conversations)
            ],
            "password": PASSWORD,
            "message": message,
            "reply": reply,
            "tokens": n,
        }
        (out_dir / f"plan-{run}.json").write_text(json.dumps(plan))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", required=True, help="chats per run, e.g. 10,100,500")
    parser.add_argument("--tokens", type=int, default=200, help="tokens in each reply")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args()
    runs = [int(c) for c in args.runs.split(",")]
    with transaction.atomic():
        make_users(max(runs) + 1)
    make_plans(runs, args.tokens, args.out_dir)


if __name__ == "__main__":
    main()
