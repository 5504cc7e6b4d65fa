"""Settings, read from the environment (and from .env in development).

Every variable is documented in .env.example.
"""

import os
from pathlib import Path

import dj_database_url
import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP
from dotenv import load_dotenv

BASE_DIR = Path(__file__).resolve().parent.parent
load_dotenv(BASE_DIR / ".env")


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# Core
# https://docs.djangoproject.com/en/6.1/ref/settings/#core-settings
PROJECT_NAME = {{ cookiecutter.project_name | python_string }}
DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = os.environ["DJANGO_SECRET_KEY"]
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1")
ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "servestatic",
    "channels",
    "django_htmx",
    "accounts",  # before allauth: its templates restyle allauth's pages
    "allauth",
    "allauth.account",
    "chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.csp",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "chat.context_processors.project",
            ],
        },
    },
]

# Database: SQLite by default, PostgreSQL with DATABASE_URL=postgres://...
# https://docs.djangoproject.com/en/6.1/ref/settings/#databases
# No persistent connections (CONN_MAX_AGE=0): under ASGI every request runs in a thread of
# its own, so a kept connection is never reused and piles up (Django ticket #33497).
DATABASES = {
    "default": dj_database_url.config(
        default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=0,
        # With the pool: a connection is checked before it is lent, so one that a database
        # restart broke is replaced instead of failing a user's request.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Django's connection pool (psycopg_pool): every thread borrows a connection for one piece
    # of database work and gives it back, so a process never holds more than max_size, however
    # many requests and replies it serves. A thread that finds none free waits up to timeout (s).
    # https://docs.djangoproject.com/en/6.1/ref/databases/#connection-pool
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": int(os.environ.get("DATABASE_POOL_SIZE", "8")),
            "timeout": 30,
        }
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Replies write from several threads; wait for the write lock instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests too: an in-memory test database shares one cache whose table locks ignore that
    # timeout, so concurrent replies would fail with "database table is locked".
    DATABASES["default"]["TEST"] = {"NAME": BASE_DIR / "test-db.sqlite3"}

# Authentication
# https://docs.djangoproject.com/en/6.1/topics/auth/default/
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "chat:home"
LOGOUT_REDIRECT_URL = "account_login"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# Accounts, by django-allauth: sign-up with a verified e-mail address, login by e-mail or
# username, password reset by mail. Rate limits are counted in the cache (CACHES below).
# https://docs.allauth.org/en/latest/account/configuration.html
# https://docs.allauth.org/en/latest/account/rate_limits.html
ACCOUNT_LOGIN_METHODS = {"email", "username"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "username*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "mandatory"
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_RATE_LIMITS = {
    # Wrong passwords: per client address, and per account (the "key") across addresses.
    "login_failed": os.environ.get("ACCOUNT_RATE_LIMIT_LOGIN_FAILED", "10/m/ip,5/5m/key"),
    "signup": os.environ.get("ACCOUNT_RATE_LIMIT_SIGNUP", "5/m/ip,30/h/ip"),
    "reset_password": os.environ.get("ACCOUNT_RATE_LIMIT_RESET_PASSWORD", "20/m/ip,5/m/key"),
}
# Proxies of yours in front of the app: the client address is read from X-Forwarded-For.
ALLAUTH_TRUSTED_PROXY_COUNT = int(os.environ.get("ALLAUTH_TRUSTED_PROXY_COUNT", "0"))

# E-mail: printed to the console in development (by config/mail.py, so that links print whole);
# in production EMAIL_URL says how to send, e.g. smtp+tls://user:password@smtp.example.com:587
# (django-environ's URL schemes), turned into Django's MAILERS.
# https://django-environ.readthedocs.io/en/latest/types.html#environ-env-email-url
# https://docs.djangoproject.com/en/6.1/ref/settings/#mailers
EMAIL_URL = os.environ.get("EMAIL_URL", "consolemail://" if DEBUG else "")
if not EMAIL_URL:
    raise ImproperlyConfigured(
        "Set EMAIL_URL (e.g. smtp+tls://user:password@smtp.example.com:587): production "
        "sends password resets and address verifications by mail."
    )


def mailer(url: str) -> dict:
    """A MAILERS entry from an e-mail URL: the backend and its options, unset ones left out."""
    config = environ.Env.email_url_config(url)
    options = {
        "host": config["EMAIL_HOST"],
        "port": config["EMAIL_PORT"],
        "username": config["EMAIL_HOST_USER"],
        "password": config["EMAIL_HOST_PASSWORD"],
        "use_tls": config.get("EMAIL_USE_TLS"),
        "use_ssl": config.get("EMAIL_USE_SSL"),
        "file_path": config["EMAIL_FILE_PATH"],
    }
    backend = config["EMAIL_BACKEND"]
    if backend == "django.core.mail.backends.console.EmailBackend":  # consolemail://, whole links
        backend = "config.mail.EmailBackend"
    return {
        "BACKEND": backend,
        "OPTIONS": {name: value for name, value in options.items() if value},
    }


MAILERS = {"default": mailer(EMAIL_URL)}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "webmaster@localhost")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# Internationalization
# https://docs.djangoproject.com/en/6.1/topics/i18n/
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Static files, served by ServeStatic: WhiteNoise's ASGI-native successor, which serves files
# without Django's per-response "StreamingHttpResponse must consume synchronous iterators"
# warning (bench/static_files.py in the template). In production, collectstatic writes
# compressed copies with content-hashed names (cached for a year); in development the apps'
# files are served as they are.
# https://archmonger.github.io/ServeStatic/latest/django-settings/
# https://docs.djangoproject.com/en/6.1/ref/contrib/staticfiles/#manifeststaticfilesstorage
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "servestatic.storage.CompressedManifestStaticFilesStorage"
        )
    },
}

# Channels: the layer carries presence and coalesced updates between connections
# https://channels.readthedocs.io/en/latest/topics/channel_layers.html
{%- if cookiecutter.channel_layer == "redis" %}
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# The cache holds the account rate limits: in Redis, every process counts the same attempts.
# https://docs.djangoproject.com/en/6.1/topics/cache/#redis
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
}
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "chat.layers.RedisPubSubChannelLayer",
        "CONFIG": {
            # Bounded timeouts: with Redis gone, a send fails fast instead of hanging a reply.
            "hosts": [{"address": REDIS_URL, "socket_connect_timeout": 2, "socket_timeout": 5}],
        },
    }
}
{%- else %}
# Channels' in-memory layer, with its expiry housekeeping once a second (chat/layers.py).
CHANNEL_LAYERS = {"default": {"BACKEND": "chat.layers.InMemoryChannelLayer"}}
{%- endif %}

# Security
# https://docs.djangoproject.com/en/6.1/ref/middleware/#module-django.middleware.security
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_SECURE_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True


def websocket_origins(hosts: list[str], debug: bool) -> list[str]:
    """connect-src must name ws(s):// explicitly: 'self' does not cover it in every browser."""
    schemes = ["wss", "ws"] if debug else ["wss"]
    return [
        f"{scheme}://{'*' + host if host.startswith('.') else host}{':*' if debug else ''}"
        for host in hosts
        if host != "*"
        for scheme in schemes
    ]


# Content-Security-Policy, Django's own: scripts need the per-request nonce
# https://docs.djangoproject.com/en/6.1/ref/csp/
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF, *websocket_origins(ALLOWED_HOSTS, DEBUG)],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "object-src": [CSP.NONE],
}

# Logging: provider and layer faults are logged for the operator
# https://docs.djangoproject.com/en/6.1/topics/logging/
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"chat": {"handlers": ["console"], "level": "INFO"}},
}

# LLM provider: the SDK's own environment variables; with no key the demo model answers
{%- if cookiecutter.llm_provider == "openai" %}
# https://platform.openai.com/docs/api-reference/chat-streaming
LLM_API_KEY = os.environ.get("OPENAI_API_KEY", "")
LLM_BASE_URL = os.environ.get("OPENAI_BASE_URL") or None
LLM_MODEL = os.environ.get("OPENAI_MODEL", "gpt-5-mini")
# Reasoning models think before they answer, billed as output tokens within the limit below:
# minimal, low, medium or high (empty: not sent, for models that do not reason).
# https://platform.openai.com/docs/guides/reasoning
LLM_REASONING_EFFORT = os.environ.get("OPENAI_REASONING_EFFORT", "low")
{%- elif cookiecutter.llm_provider == "anthropic" %}
# https://docs.anthropic.com/en/api/messages-streaming
LLM_API_KEY = os.environ.get("ANTHROPIC_API_KEY", "")
LLM_BASE_URL = os.environ.get("ANTHROPIC_BASE_URL") or None
LLM_MODEL = os.environ.get("ANTHROPIC_MODEL", "claude-haiku-4-5")
# Extended thinking: 0 turns it off; 1024 or more is its token budget, billed as output and
# below LLM_MAX_OUTPUT_TOKENS (empty: not sent, the model's default).
# https://docs.anthropic.com/en/docs/build-with-claude/extended-thinking
_thinking = os.environ.get("ANTHROPIC_THINKING_BUDGET", "0")
LLM_THINKING_BUDGET = int(_thinking) if _thinking else None
{%- elif cookiecutter.llm_provider == "gemini" %}
# https://ai.google.dev/gemini-api/docs/text-generation#streaming
LLM_API_KEY = os.environ.get("GEMINI_API_KEY", "")
LLM_BASE_URL = os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
LLM_MODEL = os.environ.get("GEMINI_MODEL", "gemini-2.5-flash")
# Thinking tokens per reply, billed as output and counted in LLM_MAX_OUTPUT_TOKENS: 0 turns
# thinking off (Flash models), -1 lets the model choose (empty: not sent, the model's default).
# https://ai.google.dev/gemini-api/docs/thinking#set-budget
_thinking = os.environ.get("GEMINI_THINKING_BUDGET", "1024")
LLM_THINKING_BUDGET = int(_thinking) if _thinking else None
{%- elif cookiecutter.llm_provider == "ollama" %}
# https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion
LLM_BASE_URL = os.environ.get("OLLAMA_HOST") or None
LLM_MODEL = os.environ.get("OLLAMA_MODEL", "llama3.2")
# Thinking models (qwen3, deepseek-r1, gpt-oss): true, false, or low/medium/high for gpt-oss;
# thinking counts in LLM_MAX_OUTPUT_TOKENS (empty: not sent, the model's default).
# https://ollama.com/blog/thinking
_think = os.environ.get("OLLAMA_THINK", "").strip().lower()
LLM_THINK = {"": None, "true": True, "false": False}.get(_think, _think)
{%- endif %}
# Seconds to wait for the provider to connect or send the next piece of the reply.
LLM_TIMEOUT = float(os.environ.get("LLM_TIMEOUT", "60"))
# Output tokens per reply, thinking included: room for reasoning and a long answer.
LLM_MAX_OUTPUT_TOKENS = int(os.environ.get("LLM_MAX_OUTPUT_TOKENS", "8192"))

# Chat
CHAT_SYSTEM_PROMPT = os.environ.get("CHAT_SYSTEM_PROMPT", "You are a helpful assistant.")
# Characters of past messages sent to the model with each new message (newest kept).
CHAT_HISTORY_BUDGET = int(os.environ.get("CHAT_HISTORY_BUDGET", "12000"))
CHAT_MAX_MESSAGE_LENGTH = int(os.environ.get("CHAT_MAX_MESSAGE_LENGTH", "4000"))
CHAT_MESSAGES_PER_MINUTE = int(os.environ.get("CHAT_MESSAGES_PER_MINUTE", "20"))

# Socket limits (chat/limits.py): frame size checked before parsing, frames a second per
# connection, open sockets per user and process. The server refuses frames over twice the
# consumer's limit unread (daphne here; uvicorn: --ws-max-size in the README's command).
CHAT_MAX_FRAME_BYTES = int(os.environ.get("CHAT_MAX_FRAME_BYTES", "65536"))
CHAT_FRAMES_PER_SECOND = float(os.environ.get("CHAT_FRAMES_PER_SECOND", "5"))
CHAT_SOCKETS_PER_USER = int(os.environ.get("CHAT_SOCKETS_PER_USER", "10"))
DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE = DAPHNE_WEBSOCKET_MAX_FRAME_SIZE = 2 * CHAT_MAX_FRAME_BYTES
# A reply is cut off after this many seconds.
CHAT_GENERATION_TIMEOUT = int(os.environ.get("CHAT_GENERATION_TIMEOUT", "300"))
# A streaming reply's text is written back this often (seconds), which is also its heartbeat;
# one whose heartbeat is older than CHAT_HEARTBEAT_TIMEOUT lost its server (a crash, a kill)
# and shows as interrupted with the text last written (chat/checkpoints.py).
CHAT_CHECKPOINT_INTERVAL = float(os.environ.get("CHAT_CHECKPOINT_INTERVAL", "1"))
CHAT_HEARTBEAT_TIMEOUT = float(os.environ.get("CHAT_HEARTBEAT_TIMEOUT", "10"))
# When the last tab watching a reply closes (a reload, a dropped connection), the reply goes
# on this many seconds for a tab that comes back; then it stops (chat/resume.py).
CHAT_RESUME_GRACE = float(os.environ.get("CHAT_RESUME_GRACE", "15"))
# The connection that asked gets the reply so far, rendered as Markdown, once per this many
# seconds while it streams (each frame renders the Markdown still open: keep it above 0.05).
CHAT_FRAME_INTERVAL = float(os.environ.get("CHAT_FRAME_INTERVAL", "0.1"))
# Other connections watching a conversation get a snapshot this often while it streams.
CHAT_FANOUT_INTERVAL = float(os.environ.get("CHAT_FANOUT_INTERVAL", "0.25"))
{%- if cookiecutter.consumer == "sync" %}
# Replies written at once per process; more wait for a free thread.
CHAT_REPLY_THREADS = int(os.environ.get("CHAT_REPLY_THREADS", "200"))
{%- endif %}
# Seconds between the offline demo model's tokens.
DEMO_MODEL_DELAY = float(os.environ.get("DEMO_MODEL_DELAY", "0.03"))
