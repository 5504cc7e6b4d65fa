"""AnthropicChat against the real SDK, with HTTP answered by a mock transport or loopback socket.

The last tests drive it through the chat socket, as the consumer does.
"""

{% if cookiecutter.consumer == "async" -%}
import asyncio
{% endif -%}
import html
import json
import logging
import socket

import httpx2
import pytest

from chat.llm.anthropic_chat import AnthropicChat
from chat.llm.base import (
    CUT_AT_LENGTH,
    CUT_OFF,
    EMPTY,
    FILTERED,
    NO_TEXT_AT_LENGTH,
    TIMED_OUT,
    UNREACHABLE,
    ChatMessage,
    ProviderError,
    error_for_status,
)
from chat.models import Message

from .conftest import (
    SilentProvider,
    end_while_the_provider_is_silent,
    final_status,
    live_text,
    read_reply,
    reply_in_chat,
)

API_KEY = "sk-ant-test-SECRET-123"
SYSTEM = "You are terse."
HISTORY = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Count to three"),
]


def sse(data: dict) -> bytes:
    """One server-sent event of a Messages stream, named after its type as the API does."""
    return f"event: {data['type']}\ndata: {json.dumps(data)}\n\n".encode()


def text(delta: str) -> bytes:
    return sse(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": delta},
        }
    )


START = [
    sse(
        {
            "type": "message_start",
            "message": {
                "id": "msg_01",
                "type": "message",
                "role": "assistant",
                "model": "claude-haiku-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 31, "output_tokens": 1},
            },
        }
    ),
    # A thinking block comes first; it is not part of the reply.
    sse(
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        }
    ),
    sse(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Counting."},
        }
    ),
    sse(
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "EqQBCgIYAhIM"},
        }
    ),
    sse({"type": "content_block_stop", "index": 0}),
    sse({"type": "ping"}),
    sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
]
END = [
    sse({"type": "content_block_stop", "index": 1}),
    sse(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 12},
        }
    ),
    sse({"type": "message_stop"}),
]


class Body(httpx2.SyncByteStream, httpx2.AsyncByteStream):
    """A streamed response body that records how much of it was sent and whether it was closed."""

    def __init__(self, pieces: list[bytes], then: Exception | None = None) -> None:
        self.pieces = pieces
        self.then = then
        self.sent = 0
        self.closed = False

    def __iter__(self):
        for piece in self.pieces:
            if self.closed:
                return
            self.sent += 1
            yield piece
        if self.then:
            raise self.then

    async def __aiter__(self):
        for piece in self:
            yield piece

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True
{%- if cookiecutter.consumer == "async" %}


class StalledBody(Body):
    """A body that sends its pieces, then nothing more until it is closed."""

    async def __aiter__(self):
        for piece in self:
            yield piece
        await asyncio.Event().wait()
{%- endif %}


class Server:
    """Answers every request with one response, and keeps the requests it was sent."""

    def __init__(self, response: httpx2.Response) -> None:
        self.response = response
        self.requests: list[httpx2.Request] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        return self.response


def model_for(server: Server) -> AnthropicChat:
    transport = httpx2.MockTransport(server)
    return AnthropicChat(
        api_key=API_KEY,
        base_url="https://api.anthropic.test",
        model="claude-haiku-4-5",
        timeout=5,
        max_output_tokens=256,
        max_retries=0,
{%- if cookiecutter.consumer == "async" %}
        http_client=httpx2.AsyncClient(transport=transport),
{%- else %}
        http_client=httpx2.Client(transport=transport),
{%- endif %}
    )


def streaming(body: Body) -> Server:
    return Server(httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=body))
{%- if cookiecutter.consumer == "async" %}


def reply(model: AnthropicChat) -> tuple[list[str], ProviderError | None]:
    """The deltas the model yielded, and the error it ended with, if any."""
    deltas: list[str] = []

    async def read() -> None:
        async for delta in model.stream(SYSTEM, HISTORY):
            deltas.append(delta)

    try:
        asyncio.run(read())
    except ProviderError as error:
        return deltas, error
    return deltas, None


def first_delta_then_close(model: AnthropicChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""

    async def read() -> tuple[str, bool]:
        stream = model.stream(SYSTEM, HISTORY)
        first = await anext(stream)
        await stream.aclose()
        return first, body.closed

    return asyncio.run(read())
{%- else %}


def reply(model: AnthropicChat) -> tuple[list[str], ProviderError | None]:
    """The deltas the model yielded, and the error it ended with, if any."""
    deltas: list[str] = []
    try:
        for delta in model.stream(SYSTEM, HISTORY):
            deltas.append(delta)
    except ProviderError as error:
        return deltas, error
    return deltas, None


def first_delta_then_close(model: AnthropicChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""
    stream = model.stream(SYSTEM, HISTORY)
    first = next(stream)
    stream.close()
    return first, body.closed
{%- endif %}


def test_streams_the_deltas_and_sends_prompt_history_model_and_limit():
    body = Body([*START, text("One"), text(""), text(", two"), text(", three."), *END])
    server = streaming(body)

    deltas, error = reply(model_for(server))

    assert (deltas, error) == (["One", ", two", ", three."], None)
    [request] = server.requests
    assert request.url == "https://api.anthropic.test/v1/messages"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert "anthropic-version" in request.headers
    assert json.loads(request.content) == {
        "model": "claude-haiku-4-5",
        "system": SYSTEM,
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Count to three"},
        ],
        "max_tokens": 256,
        "thinking": {"type": "disabled"},
        "stream": True,
    }
    assert body.closed


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (
            401,
            "authentication_error",
            str(error_for_status(401)),
        ),
        (
            429,
            "rate_limit_error",
            "The model provider is rate limiting us. Wait a moment, then retry.",
        ),
        (500, "api_error", "The model provider had a server error. Retry in a moment."),
    ],
)
def test_an_error_status_becomes_a_message_without_the_key(status, kind, message):
    error_body = {"type": "error", "error": {"type": kind, "message": f"x-api-key {API_KEY}"}}
    server = Server(httpx2.Response(status, json=error_body))

    deltas, error = reply(model_for(server))

    assert deltas == []
    assert str(error) == message
    assert API_KEY not in str(error)


def test_a_provider_that_does_not_answer_in_time_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        model = AnthropicChat(
            api_key=API_KEY,
            base_url=f"http://127.0.0.1:{port}",
            model="claude-haiku-4-5",
            timeout=0.2,
            max_output_tokens=256,
            max_retries=0,
        )

        deltas, error = reply(model)

    assert (deltas, str(error)) == ([], TIMED_OUT)


def test_a_provider_that_refuses_the_connection_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    model = AnthropicChat(
        api_key=API_KEY,
        base_url=f"http://127.0.0.1:{port}",
        model="claude-haiku-4-5",
        timeout=5,
        max_output_tokens=256,
        max_retries=0,
    )

    deltas, error = reply(model)

    assert (deltas, str(error)) == ([], UNREACHABLE)


@pytest.mark.parametrize(
    ("pieces", "then", "message"),
    [
        pytest.param(
            [*START, text("One"), text(", two")],
            httpx2.RemoteProtocolError("peer closed connection without sending complete body"),
            CUT_OFF,
            id="connection dropped",
        ),
        pytest.param(
            [
                *START,
                text("One"),
                text(", two"),
                b'event: content_block_delta\ndata: {"type": "con\n\n',
            ],
            None,
            CUT_OFF,
            id="malformed event",
        ),
        pytest.param(
            [
                *START,
                text("One"),
                text(", two"),
                sse(
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    }
                ),
            ],
            None,
            CUT_OFF,
            id="error event",
        ),
        pytest.param(
            [*START, text("One"), text(", two")],
            httpx2.ReadTimeout("timed out"),
            TIMED_OUT,
            id="stalled",
        ),
    ],
)
def test_a_reply_that_breaks_off_keeps_what_came_then_says_why(pieces, then, message):
    deltas, error = reply(model_for(streaming(Body(pieces, then))))

    assert (deltas, str(error)) == (["One", ", two"], message)


def test_closing_the_stream_early_closes_the_upstream_response():
    body = Body([*START, text("One"), text(", two"), text(", three."), *END])

    first, closed = first_delta_then_close(model_for(streaming(body)), body)

    assert (first, closed) == ("One", True)
    assert body.sent == len(START) + 1  # the rest of the reply was never read
{%- if cookiecutter.consumer == "async" %}


async def test_cancelling_the_task_waiting_for_the_next_delta_closes_the_upstream_response():
    body = StalledBody([*START, text("One")])
    model = model_for(streaming(body))
    first_read = asyncio.Event()

    async def read() -> None:
        async for _ in model.stream(SYSTEM, HISTORY):
            first_read.set()

    task = asyncio.create_task(read())
    await first_read.wait()
    await asyncio.sleep(0.01)  # the task now waits inside the stream for the next delta
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert body.closed


async def test_from_settings_reads_the_llm_settings_and_shares_one_client(settings):
{%- else %}


def test_from_settings_reads_the_llm_settings_and_shares_one_client(settings):
{%- endif %}
    settings.LLM_API_KEY = API_KEY
    settings.LLM_BASE_URL = "https://llm.example.test"
    settings.LLM_MODEL = "claude-sonnet-4-5"
    settings.LLM_TIMEOUT = 7.5
    settings.LLM_MAX_OUTPUT_TOKENS = 100
    settings.LLM_THINKING_BUDGET = 2048

    model = AnthropicChat.from_settings()

    assert (model.label, model.is_demo) == ("claude-sonnet-4-5 via Anthropic", False)
    assert (model.model, model.max_output_tokens) == ("claude-sonnet-4-5", 100)
    assert model.thinking_budget == 2048
    assert model.client.api_key == API_KEY
    assert model.client.base_url == "https://llm.example.test"
    assert model.client.timeout == 7.5
    assert AnthropicChat.from_settings().client is model.client


# Through the chat: the real SDK behind the real socket, each fault at the HTTP level.


@pytest.fixture
def silent_url():
    """A server that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def refusing_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    return f"http://127.0.0.1:{port}"


ERROR_KINDS = {401: "authentication_error", 429: "rate_limit_error", 500: "api_error"}


def failing_model(fault: str, silent_url: str) -> AnthropicChat:
    """A model whose next reply fails with this fault."""
    if fault in ("401", "429", "500"):
        # An error body that names the key; none of it may reach the user.
        kind = ERROR_KINDS[int(fault)]
        error_body = {"type": "error", "error": {"type": kind, "message": f"x-api-key {API_KEY}"}}
        return model_for(Server(httpx2.Response(int(fault), json=error_body)))
    if fault == "broken mid-stream":
        dropped = httpx2.RemoteProtocolError("peer closed connection without sending complete body")
        return model_for(streaming(Body([*START, text("One"), text(", two")], dropped)))
    return AnthropicChat(
        api_key=API_KEY,
        base_url=silent_url if fault == "timeout" else refusing_url(),
        model="claude-haiku-4-5",
        timeout=0.2,
        max_output_tokens=256,
        max_retries=0,
    )


def operator_lines(caplog) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "chat.consumers" and record.levelno >= logging.WARNING
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("fault", "message", "partial"),
    [
        pytest.param("401", str(error_for_status(401)), "", id="invalid key"),
        pytest.param("429", str(error_for_status(429)), "", id="rate limited"),
        pytest.param("500", str(error_for_status(500)), "", id="server error"),
        pytest.param("timeout", TIMED_OUT, "", id="timeout"),
        pytest.param("refused", UNREACHABLE, "", id="connection refused"),
        pytest.param("broken mid-stream", CUT_OFF, "One, two", id="broken mid-stream"),
    ],
)
async def test_a_fault_in_the_chat_is_explained_kept_logged_and_can_be_retried(
    fault, message, partial, silent_url, user, conversation, connect, monkeypatch, caplog
):
    failing = failing_model(fault, silent_url)
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: failing)
    chat = await connect(user, conversation.pk)

    await chat.send_to(json.dumps({"message": "Count to three"}))
    failed = await read_reply(chat)

    stored = await Message.objects.filter(conversation=conversation).alast()
    assert final_status(failed) == "error"
    assert not any(API_KEY in frame for frame in failed)
    assert API_KEY not in stored.error
    assert stored.detail  # what the provider said, for the operator
    assert API_KEY not in stored.detail
    assert live_text(failed) == partial
    assert message in html.unescape(failed[-1])
    assert 'name="action" value="retry"' in failed[-1]
    assert (stored.role, stored.content, stored.status) == ("assistant", partial, "error")
    assert stored.error == message
    assert operator_lines(caplog)

    server = streaming(Body([*START, text("One"), text(", two"), text(", three."), *END]))
    healthy = model_for(server)
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: healthy)
    await chat.send_to(json.dumps({"action": "retry"}))
    retried = await read_reply(chat)

    stored = await Message.objects.filter(conversation=conversation).alast()
    assert final_status(retried) == "complete"
    assert live_text(retried) == "One, two, three."
    assert (stored.content, stored.status) == ("One, two, three.", "complete")
    [request] = server.requests
    assert json.loads(request.content)["messages"] == [  # the failed reply is left out
        {"role": "user", "content": "Count to three"}
    ]
    assert not any(API_KEY in frame for frame in retried)


# The conformance table: each way a Messages stream can end, as the bytes arrive, and what the
# chat stores and shows for it. A quirk found later is one more row.
# https://docs.anthropic.com/en/api/messages-streaming
# https://docs.anthropic.com/en/api/handling-stop-reasons


def ending(stop_reason: str | None) -> list[bytes]:
    """The end of a stream: the text block closes, message_delta carries stop_reason."""
    return [
        sse({"type": "content_block_stop", "index": 1}),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 12},
            }
        ),
        sse({"type": "message_stop"}),
    ]


def error_event(kind: str, message: str) -> bytes:
    return sse({"type": "error", "error": {"type": kind, "message": message}})


CITATION = sse(
    {
        "type": "content_block_delta",
        "index": 1,
        "delta": {
            "type": "citations_delta",
            "citation": {
                "type": "char_location",
                "cited_text": "three",
                "document_index": 0,
                "document_title": None,
                "start_char_index": 0,
                "end_char_index": 5,
            },
        },
    }
)
REDACTED_THINKING = sse(
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"},
    }
)

CONFORMANCE = [
    pytest.param(
        [*START, text("One"), text(", two"), *END], "complete", "One, two", "", id="end_turn"
    ),
    pytest.param(
        [
            *START,
            text("One"),
            CITATION,
            REDACTED_THINKING,
            sse({"type": "ping"}),
            text(", two"),
            *END,
        ],
        "complete",
        "One, two",
        "",
        id="events without text are skipped",
    ),
    pytest.param(
        [*START, text("One"), *ending("stop_sequence")],
        "complete",
        "One",
        "",
        id="stop_sequence",
    ),
    pytest.param(
        [*START, text("One"), *ending("max_tokens")],
        "truncated",
        "One",
        CUT_AT_LENGTH,
        id="max_tokens after text",
    ),
    pytest.param(
        [*START, *ending("max_tokens")],
        "truncated",
        "",
        NO_TEXT_AT_LENGTH,
        id="max_tokens spent thinking",
    ),
    pytest.param(
        [*START, text("One"), *ending("model_context_window_exceeded")],
        "truncated",
        "One",
        CUT_AT_LENGTH,
        id="model_context_window_exceeded",
    ),
    pytest.param(
        [*START, text("One"), *ending("refusal")],
        "filtered",
        "One",
        FILTERED,
        id="refusal",
    ),
    pytest.param([*START, *ending("refusal")], "filtered", "", FILTERED, id="refusal, no text"),
    pytest.param(
        [*START, text("One"), *ending("pause_turn")],
        "error",
        "One",
        CUT_OFF,
        id="pause_turn",
    ),
    pytest.param([*START, text("One"), *ending("tool_use")], "complete", "One", "", id="tool_use"),
    pytest.param([*START, *END], "error", "", EMPTY, id="end_turn without text"),
    pytest.param(
        [*START, text("One"), *ending("a_reason_added_later")],
        "complete",
        "One",
        "",
        id="unknown stop_reason",
    ),
    pytest.param(
        [*START, text("One"), error_event("overloaded_error", "Overloaded")],
        "error",
        "One",
        CUT_OFF,
        id="overloaded_error event",
    ),
    pytest.param(
        [*START, text("One"), error_event("api_error", "Internal server error")],
        "error",
        "One",
        CUT_OFF,
        id="api_error event",
    ),
    pytest.param(
        [*START, text("One"), sse({"type": "message_stop"})],
        "error",
        "One",
        CUT_OFF,
        id="no stop_reason",
    ),
    pytest.param([*START, text("One")], "error", "One", CUT_OFF, id="stream ends early"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("wire", "status", "text", "message"), CONFORMANCE)
async def test_each_way_a_stream_ends_is_stored_and_shown_as_the_table_says(
    wire, status, text, message, user, conversation, connect, monkeypatch
):
    model = model_for(streaming(Body(wire)))

    frames, stored = await reply_in_chat(model, user, conversation, connect, monkeypatch)

    assert (stored.status, stored.content, stored.error) == (status, text, message)
    assert (final_status(frames), live_text(frames)) == (status, text)
    assert message in html.unescape(frames[-1])
    assert ('name="action" value="retry"' in frames[-1]) == (status != "complete")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ending", ["stop", "leave"])
async def test_stop_or_leaving_while_the_provider_is_silent_ends_the_reply_and_hangs_up(
    ending, user, conversation, connect, monkeypatch
):
    with SilentProvider(b"text/event-stream", b"".join([*START, text("One")])) as provider:
        model = AnthropicChat(
            api_key=API_KEY,
            base_url=provider.url,
            model="claude-haiku-4-5",
            timeout=30,  # far longer than the test waits: only Stop can end the reply
            max_output_tokens=256,
            max_retries=0,
        )

        frames, stored, latency = await end_while_the_provider_is_silent(
            ending, model, provider, user, conversation, connect, monkeypatch
        )

        assert (stored.status, stored.content) == ("stopped", "One")
        assert live_text(frames) == "One"
        assert provider.hung_up.wait(5)  # the upstream connection is closed
    print(f"{ending} with a silent provider: the reply ended {latency * 1000:.0f} ms later")
