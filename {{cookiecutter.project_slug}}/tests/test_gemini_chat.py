"""GeminiChat against the real SDK, with HTTP answered by a mock transport or a loopback socket.

The last tests drive it through the chat socket, as the consumer does.
"""

{% if cookiecutter.consumer == "async" -%}
import asyncio
{% endif -%}
import html
import json
import logging
import socket
import threading

import httpx2
import pytest

from chat.llm.base import (
    BLOCKED,
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
from chat.llm.gemini_chat import GeminiChat
from chat.models import Message

from .conftest import (
    SilentProvider,
    end_while_the_provider_is_silent,
    final_status,
    live_text,
    read_reply,
    reply_in_chat,
)

API_KEY = "AIzaSy-test-SECRET-123"
SYSTEM = "You are terse."
HISTORY = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Count to three"),
]


def sse(data: dict) -> bytes:
    """One event of a streamGenerateContent?alt=sse response, as the API sends it."""
    return f"data: {json.dumps(data)}\r\n\r\n".encode()


def chunk(*parts: dict, finish_reason: str | None = None) -> bytes:
    candidate = {"content": {"parts": list(parts), "role": "model"}, "index": 0}
    if finish_reason:
        candidate["finishReason"] = finish_reason
    return sse(
        {
            "candidates": [candidate],
            "usageMetadata": {"promptTokenCount": 31, "totalTokenCount": 31},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1",
        }
    )


def text(delta: str) -> bytes:
    return chunk({"text": delta})


START = chunk({"text": "Counting.", "thought": True})  # a thought summary is not part of the reply
END = chunk({"text": ""}, finish_reason="STOP")


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


class HangUpWatcher:
    """A loopback server that sends the start of a reply, then waits for the client to hang up."""

    def __init__(self, start: bytes) -> None:
        self.start = start
        self.hung_up = threading.Event()
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"

    def __enter__(self) -> "HangUpWatcher":
        threading.Thread(target=self.serve, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.socket.close()

    def serve(self) -> None:
        connection, _ = self.socket.accept()
        with connection:
            connection.settimeout(2)
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            headers = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
            while len(body) < int(headers[b"content-length"]):
                body += connection.recv(65536)
            first_chunk = b"%x\r\n%s\r\n" % (len(self.start), self.start)
            connection.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n" + first_chunk
            )
            if connection.recv(1) == b"":
                self.hung_up.set()


def model_for(server: Server) -> GeminiChat:
    return GeminiChat(
        api_key=API_KEY,
        base_url="https://gemini.test",
        model="gemini-2.5-flash",
        timeout=5,
        max_output_tokens=256,
        max_retries=0,
        transport=httpx2.MockTransport(server),
    )


def streaming(body: Body) -> Server:
    return Server(httpx2.Response(200, headers={"content-type": "text/event-stream"}, stream=body))
{%- if cookiecutter.consumer == "async" %}


def reply(model: GeminiChat) -> tuple[list[str], ProviderError | None]:
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


def first_delta_then_close(model: GeminiChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""

    async def read() -> tuple[str, bool]:
        stream = model.stream(SYSTEM, HISTORY)
        first = await anext(stream)
        await stream.aclose()
        return first, body.closed

    return asyncio.run(read())
{%- else %}


def reply(model: GeminiChat) -> tuple[list[str], ProviderError | None]:
    """The deltas the model yielded, and the error it ended with, if any."""
    deltas: list[str] = []
    try:
        for delta in model.stream(SYSTEM, HISTORY):
            deltas.append(delta)
    except ProviderError as error:
        return deltas, error
    return deltas, None


def first_delta_then_close(model: GeminiChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""
    stream = model.stream(SYSTEM, HISTORY)
    first = next(stream)
    stream.close()
    return first, body.closed
{%- endif %}


def test_streams_the_deltas_and_sends_prompt_history_model_and_limit():
    body = Body([START, text("One"), text(""), text(", two"), text(", three."), END])
    server = streaming(body)

    deltas, error = reply(model_for(server))

    assert (deltas, error) == (["One", ", two", ", three."], None)
    [request] = server.requests
    assert request.url.path == "/v1/models/gemini-2.5-flash:streamGenerateContent"
    assert request.url.params["alt"] == "sse"
    assert request.headers["x-goog-api-key"] == API_KEY
    assert json.loads(request.content) == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "Count to three"}]},
        ],
        "systemInstruction": {"role": "user", "parts": [{"text": SYSTEM}]},
        "generationConfig": {"maxOutputTokens": 256},
    }
    assert body.closed


@pytest.mark.parametrize(
    ("status", "error_body", "message"),
    [
        (
            400,  # what Gemini answers a wrong key with
            {
                "code": 400,
                "message": f"API key not valid: {API_KEY}. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                        "reason": "API_KEY_INVALID",
                        "domain": "googleapis.com",
                    }
                ],
            },
            str(error_for_status(401)),
        ),
        (
            401,
            {"code": 401, "message": f"Bad key {API_KEY}", "status": "UNAUTHENTICATED"},
            str(error_for_status(401)),
        ),
        (
            429,
            {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED"},
            "The model provider is rate limiting us. Wait a moment, then retry.",
        ),
        (
            500,
            {"code": 500, "message": "Internal error.", "status": "INTERNAL"},
            "The model provider had a server error. Retry in a moment.",
        ),
    ],
)
def test_an_error_status_becomes_a_message_without_the_key(status, error_body, message):
    server = Server(httpx2.Response(status, json={"error": error_body}))

    deltas, error = reply(model_for(server))

    assert deltas == []
    assert str(error) == message
    assert API_KEY not in str(error)


def test_a_provider_that_does_not_answer_in_time_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        model = GeminiChat(
            api_key=API_KEY,
            base_url=f"http://127.0.0.1:{port}",
            model="gemini-2.5-flash",
            timeout=0.2,
            max_output_tokens=256,
            max_retries=0,
        )

        deltas, error = reply(model)

    assert (deltas, str(error)) == ([], TIMED_OUT)


def test_a_provider_that_refuses_the_connection_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    model = GeminiChat(
        api_key=API_KEY,
        base_url=f"http://127.0.0.1:{port}",
        model="gemini-2.5-flash",
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
            [START, text("One"), text(", two")],
            httpx2.RemoteProtocolError("peer closed connection without sending complete body"),
            CUT_OFF,
            id="connection dropped",
        ),
        pytest.param(
            [START, text("One"), text(", two"), b'data: {"candidates": [{"cont\r\n\r\n'],
            None,
            CUT_OFF,
            id="malformed event",
        ),
        pytest.param(
            [START, text("One"), text(", two")],
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
    body = Body([START, text("One"), text(", two"), text(", three."), END])

    first, closed = first_delta_then_close(model_for(streaming(body)), body)

    assert (first, closed) == ("One", True)
    assert body.sent == 2  # the rest of the reply was never read
{%- if cookiecutter.consumer == "async" %}


async def test_closing_the_stream_early_hangs_up_on_a_real_server():
    """Through the SDK's own HTTP client, which keeps a connection pool per event loop."""
    with HangUpWatcher(START + text("One")) as server:
        model = GeminiChat(
            api_key=API_KEY,
            base_url=server.url,
            model="gemini-2.5-flash",
            timeout=5,
            max_output_tokens=256,
            max_retries=0,
        )
        stream = model.stream(SYSTEM, HISTORY)
        assert await anext(stream) == "One"
        await stream.aclose()

        assert await asyncio.to_thread(server.hung_up.wait, 1)


async def test_cancelling_the_task_waiting_for_the_next_delta_closes_the_upstream_response():
    body = StalledBody([START, text("One")])
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


def test_closing_the_stream_early_hangs_up_on_a_real_server():
    """Through the SDK's own HTTP client."""
    with HangUpWatcher(START + text("One")) as server:
        model = GeminiChat(
            api_key=API_KEY,
            base_url=server.url,
            model="gemini-2.5-flash",
            timeout=5,
            max_output_tokens=256,
            max_retries=0,
        )
        stream = model.stream(SYSTEM, HISTORY)
        assert next(stream) == "One"
        stream.close()

        assert server.hung_up.wait(1)


def test_from_settings_reads_the_llm_settings_and_shares_one_client(settings):
{%- endif %}
    settings.LLM_API_KEY = API_KEY
    settings.LLM_BASE_URL = "https://llm.example.test"
    settings.LLM_MODEL = "gemini-2.5-pro"
    settings.LLM_TIMEOUT = 7.5
    settings.LLM_MAX_OUTPUT_TOKENS = 100
    settings.LLM_THINKING_BUDGET = 0

    model = GeminiChat.from_settings()

    assert (model.label, model.is_demo) == ("gemini-2.5-pro via Gemini", False)
    assert (model.model, model.max_output_tokens) == ("gemini-2.5-pro", 100)
    assert model.thinking_budget == 0
    options = model.client._api_client.get_read_only_http_options()
    assert (options["base_url"], options["timeout"]) == ("https://llm.example.test", 7500)
    assert GeminiChat.from_settings().client is model.client


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


# Error bodies that name the key; none of it may reach the user.
ERROR_BODIES = {
    400: {  # what Gemini answers a wrong key with
        "code": 400,
        "message": f"API key not valid: {API_KEY}. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ],
    },
    401: {"code": 401, "message": f"Bad key {API_KEY}", "status": "UNAUTHENTICATED"},
    429: {"code": 429, "message": f"Quota exceeded for {API_KEY}.", "status": "RESOURCE_EXHAUSTED"},
    500: {"code": 500, "message": f"Internal error for {API_KEY}.", "status": "INTERNAL"},
}


def failing_model(fault: str, silent_url: str) -> GeminiChat:
    """A model whose next reply fails with this fault."""
    if fault.isdigit():
        error_body = {"error": ERROR_BODIES[int(fault)]}
        return model_for(Server(httpx2.Response(int(fault), json=error_body)))
    if fault == "broken mid-stream":
        dropped = httpx2.RemoteProtocolError("peer closed connection without sending complete body")
        return model_for(streaming(Body([START, text("One"), text(", two")], dropped)))
    return GeminiChat(
        api_key=API_KEY,
        base_url=silent_url if fault == "timeout" else refusing_url(),
        model="gemini-2.5-flash",
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
        pytest.param("400", str(error_for_status(401)), "", id="invalid key"),
        pytest.param("401", str(error_for_status(401)), "", id="unauthenticated"),
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

    server = streaming(Body([START, text("One"), text(", two"), text(", three."), END]))
    healthy = model_for(server)
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: healthy)
    await chat.send_to(json.dumps({"action": "retry"}))
    retried = await read_reply(chat)

    stored = await Message.objects.filter(conversation=conversation).alast()
    assert final_status(retried) == "complete"
    assert live_text(retried) == "One, two, three."
    assert (stored.content, stored.status) == ("One, two, three.", "complete")
    [request] = server.requests
    assert json.loads(request.content)["contents"] == [  # the failed reply is left out
        {"role": "user", "parts": [{"text": "Count to three"}]}
    ]
    assert not any(API_KEY in frame for frame in retried)


# The conformance table: each way a streamGenerateContent stream can end, as the bytes arrive,
# and what the chat stores and shows for it. A quirk found later is one more row.
# https://ai.google.dev/api/generate-content#FinishReason
# https://ai.google.dev/api/generate-content#BlockReason


def blocked(reason: str) -> bytes:
    """The only chunk of a stream whose prompt was blocked: feedback, no candidates."""
    return sse(
        {
            "promptFeedback": {"blockReason": reason, "safetyRatings": []},
            "usageMetadata": {"promptTokenCount": 31, "totalTokenCount": 31},
            "modelVersion": "gemini-2.5-flash",
            "responseId": "resp-1",
        }
    )


USAGE_ONLY = sse({"usageMetadata": {"promptTokenCount": 31}, "modelVersion": "gemini-2.5-flash"})
NO_CONTENT = sse({"candidates": [{"index": 0}], "modelVersion": "gemini-2.5-flash"})
THOUGHT = chunk({"text": "Thinking it over.", "thought": True})
ERROR_IN_STREAM = sse(
    {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
)

FILTERED_BY = ["SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII"]
FILTERED_BY += ["IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"]
FILTERED_BY += ["ESCALATION"]
FAILED_BY = ["OTHER", "FINISH_REASON_UNSPECIFIED", "MALFORMED_FUNCTION_CALL"]
FAILED_BY += ["UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", "MALFORMED_RESPONSE"]
FAILED_BY += ["MISSING_THOUGHT_SIGNATURE", "PUP_LIMITED_DISABLED", "IMAGE_OTHER", "NO_IMAGE"]
BLOCKED_BY = ["SAFETY", "OTHER", "BLOCKLIST", "PROHIBITED_CONTENT", "IMAGE_SAFETY"]
BLOCKED_BY += ["MODEL_ARMOR", "JAILBREAK", "BLOCKED_REASON_UNSPECIFIED"]

CONFORMANCE = [
    pytest.param([START, text("One"), text(", two"), END], "complete", "One, two", "", id="STOP"),
    pytest.param(
        [THOUGHT, USAGE_ONLY, NO_CONTENT, text("One"), THOUGHT, text(", two"), END],
        "complete",
        "One, two",
        "",
        id="chunks without text are skipped",
    ),
    pytest.param(
        [START, text("One"), chunk({"text": ", tw"}, finish_reason="MAX_TOKENS")],
        "truncated",
        "One, tw",
        CUT_AT_LENGTH,
        id="MAX_TOKENS after text",
    ),
    pytest.param(
        [THOUGHT, THOUGHT, sse({"candidates": [{"index": 0, "finishReason": "MAX_TOKENS"}]})],
        "truncated",
        "",
        NO_TEXT_AT_LENGTH,
        id="MAX_TOKENS spent thinking",
    ),
    pytest.param(
        [START, text("One"), chunk({"text": ""}, finish_reason="CONTINUATION")],
        "truncated",
        "One",
        CUT_AT_LENGTH,
        id="CONTINUATION",
    ),
    *(
        pytest.param(
            [START, text("One"), chunk({"text": ""}, finish_reason=reason)],
            "filtered",
            "One",
            FILTERED,
            id=reason,
        )
        for reason in FILTERED_BY
    ),
    pytest.param(
        [START, sse({"candidates": [{"index": 0, "finishReason": "SAFETY"}]})],
        "filtered",
        "",
        FILTERED,
        id="SAFETY, no text",
    ),
    *(
        pytest.param(
            [START, text("One"), chunk({"text": ""}, finish_reason=reason)],
            "error",
            "One",
            CUT_OFF,
            id=reason,
        )
        for reason in FAILED_BY
    ),
    *(
        pytest.param([blocked(reason)], "filtered", "", BLOCKED, id=f"blockReason {reason}")
        for reason in BLOCKED_BY
    ),
    pytest.param([START, END], "error", "", EMPTY, id="STOP without text"),
    pytest.param(
        [START, text("One"), chunk({"text": ""}, finish_reason="A_REASON_ADDED_LATER")],
        "complete",
        "One",
        "",
        id="unknown finishReason",
    ),
    pytest.param(
        [START, text("One"), ERROR_IN_STREAM],
        "error",
        "One",
        str(error_for_status(503)),
        id="error object in stream",
    ),
    pytest.param([START, text("One")], "error", "One", CUT_OFF, id="no finishReason"),
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
    with SilentProvider(b"text/event-stream", START + text("One")) as provider:
        model = GeminiChat(
            api_key=API_KEY,
            base_url=provider.url,
            model="gemini-2.5-flash",
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
