"""OllamaChat against the real SDK, with HTTP answered by a mock transport or a loopback socket.

The ollama SDK is built on httpx, so its mock transport comes from httpx rather than httpx2.
The last tests drive it through the chat socket, as the consumer does.
"""

{% if cookiecutter.consumer == "async" -%}
import asyncio
{% endif -%}
import html
import json
import logging
import socket

import httpx
import pytest

from chat.llm.base import (
    CUT_AT_LENGTH,
    CUT_OFF,
    EMPTY,
    NO_TEXT_AT_LENGTH,
    TIMED_OUT,
    UNREACHABLE,
    ChatMessage,
    ProviderError,
    error_for_status,
)
from chat.llm.ollama_chat import OllamaChat
from chat.models import Message

from .conftest import (
    SilentProvider,
    end_while_the_provider_is_silent,
    final_status,
    live_text,
    read_reply,
    reply_in_chat,
)

SYSTEM = "You are terse."
HISTORY = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Count to three"),
]


def line(data: dict) -> bytes:
    """One line of the newline-delimited JSON that /api/chat streams."""
    return json.dumps(data).encode() + b"\n"


def text(delta: str) -> bytes:
    return line(
        {
            "model": "llama3.2",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": delta},
            "done": False,
        }
    )


# A thinking model thinks aloud first; that is not part of the reply.
START = line(
    {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "message": {"role": "assistant", "content": "", "thinking": "Counting."},
        "done": False,
    }
)
END = line(
    {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:01.000000Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "done_reason": "stop",
        "total_duration": 1_000_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 31,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 5,
        "eval_duration": 800_000_000,
    }
)


class Body(httpx.SyncByteStream, httpx.AsyncByteStream):
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

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.response


def model_for(server: Server) -> OllamaChat:
    return OllamaChat(
        base_url="http://ollama.test:11434",
        model="llama3.2",
        timeout=5,
        max_output_tokens=256,
        transport=httpx.MockTransport(server),
    )


def streaming(body: Body) -> Server:
    return Server(
        httpx.Response(200, headers={"content-type": "application/x-ndjson"}, stream=body)
    )
{%- if cookiecutter.consumer == "async" %}


def reply(model: OllamaChat) -> tuple[list[str], ProviderError | None]:
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


def first_delta_then_close(model: OllamaChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""

    async def read() -> tuple[str, bool]:
        stream = model.stream(SYSTEM, HISTORY)
        first = await anext(stream)
        await stream.aclose()
        return first, body.closed

    return asyncio.run(read())
{%- else %}


def reply(model: OllamaChat) -> tuple[list[str], ProviderError | None]:
    """The deltas the model yielded, and the error it ended with, if any."""
    deltas: list[str] = []
    try:
        for delta in model.stream(SYSTEM, HISTORY):
            deltas.append(delta)
    except ProviderError as error:
        return deltas, error
    return deltas, None


def first_delta_then_close(model: OllamaChat, body: Body) -> tuple[str, bool]:
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
    assert request.url == "http://ollama.test:11434/api/chat"
    sent = json.loads(request.content)
    assert sent["model"] == "llama3.2"
    assert sent["messages"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Count to three"},
    ]
    assert sent["options"] == {"num_predict": 256}
    assert sent["stream"] is True
    assert body.closed


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, str(error_for_status(401))),
        (429, "The model provider is rate limiting us. Wait a moment, then retry."),
        (500, "The model provider had a server error. Retry in a moment."),
    ],
)
def test_an_error_status_becomes_a_message(status, message):
    server = Server(httpx.Response(status, json={"error": "something went wrong"}))

    deltas, error = reply(model_for(server))

    assert (deltas, str(error)) == ([], message)


def test_a_model_that_is_not_pulled_is_reported_as_unknown():
    server = Server(httpx.Response(404, json={"error": "model 'llama3.2' not found"}))

    deltas, error = reply(model_for(server))

    assert (deltas, str(error)) == ([], str(error_for_status(404)))
    assert "does not offer the model" in str(error)


def test_a_provider_that_does_not_answer_in_time_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        model = OllamaChat(
            base_url=f"http://127.0.0.1:{port}",
            model="llama3.2",
            timeout=0.2,
            max_output_tokens=256,
        )

        deltas, error = reply(model)

    assert (deltas, str(error)) == ([], TIMED_OUT)


def test_a_provider_that_refuses_the_connection_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    model = OllamaChat(
        base_url=f"http://127.0.0.1:{port}", model="llama3.2", timeout=5, max_output_tokens=256
    )

    deltas, error = reply(model)

    assert (deltas, str(error)) == ([], UNREACHABLE)


@pytest.mark.parametrize(
    ("pieces", "then", "message"),
    [
        pytest.param(
            [START, text("One"), text(", two")],
            httpx.RemoteProtocolError("peer closed connection without sending complete body"),
            CUT_OFF,
            id="connection dropped",
        ),
        pytest.param(
            [START, text("One"), text(", two"), b'{"model": "llama3.2", "mess\n'],
            None,
            CUT_OFF,
            id="malformed line",
        ),
        pytest.param(
            [START, text("One"), text(", two"), line({"error": "model runner has crashed"})],
            None,
            CUT_OFF,
            id="error line",
        ),
        pytest.param(
            [START, text("One"), text(", two")],
            httpx.ReadTimeout("timed out"),
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


def test_from_settings_reads_the_llm_settings_and_shares_one_client(settings):
{%- endif %}
    settings.LLM_BASE_URL = "http://gpu-box.test:11434"
    settings.LLM_MODEL = "qwen3:8b"
    settings.LLM_TIMEOUT = 7.5
    settings.LLM_MAX_OUTPUT_TOKENS = 100
    settings.LLM_THINK = "high"

    model = OllamaChat.from_settings()

    assert (model.label, model.is_demo) == ("qwen3:8b via Ollama", False)
    assert (model.model, model.max_output_tokens) == ("qwen3:8b", 100)
    assert model.think == "high"
    assert model.client._client.base_url == "http://gpu-box.test:11434"
    assert model.client._client.timeout == httpx.Timeout(7.5)
    assert OllamaChat.from_settings().client is model.client


# Through the chat: the real SDK behind the real socket, each fault at the HTTP level.

# Ollama takes no key, but a proxy in front of it may check one and name it in its errors.
SECRET = "sk-test-SECRET-123"


@pytest.fixture
def silent_url():
    """A server that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}"


def refusing_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def failing_model(fault: str, silent_url: str) -> OllamaChat:
    """A model whose next reply fails with this fault."""
    if fault in ("401", "429", "500"):
        error_body = {"error": f"request with token {SECRET} failed"}
        return model_for(Server(httpx.Response(int(fault), json=error_body)))
    if fault == "broken mid-stream":
        dropped = httpx.RemoteProtocolError("peer closed connection without sending complete body")
        return model_for(streaming(Body([START, text("One"), text(", two")], dropped)))
    return OllamaChat(
        base_url=silent_url if fault == "timeout" else refusing_url(),
        model="llama3.2",
        timeout=0.2,
        max_output_tokens=256,
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
    monkeypatch.setenv("OLLAMA_API_KEY", SECRET)  # the token the proxy checks
    failing = failing_model(fault, silent_url)
    monkeypatch.setattr("chat.consumers.get_chat_model", lambda: failing)
    chat = await connect(user, conversation.pk)

    await chat.send_to(json.dumps({"message": "Count to three"}))
    failed = await read_reply(chat)

    stored = await Message.objects.filter(conversation=conversation).alast()
    assert final_status(failed) == "error"
    assert not any(SECRET in frame for frame in failed)
    assert SECRET not in stored.error
    assert stored.detail  # what the provider said, for the operator
    assert SECRET not in stored.detail
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
    assert json.loads(request.content)["messages"][1:] == [  # the failed reply is left out
        {"role": "user", "content": "Count to three"}
    ]
    assert not any(SECRET in frame for frame in retried)


# The conformance table: each way an /api/chat stream can end, as the lines arrive, and what the
# chat stores and shows for it. A quirk found later is one more row.
# https://github.com/ollama/ollama/blob/main/docs/api.md#generate-a-chat-completion


def done(done_reason: str | None) -> bytes:
    """The last line of a stream; servers before done_reason existed sent done alone."""
    data = {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:01.000000Z",
        "message": {"role": "assistant", "content": ""},
        "done": True,
        "eval_count": 5,
    }
    if done_reason is not None:
        data["done_reason"] = done_reason
    return line(data)


def thinking(thought: str) -> bytes:
    return line(
        {
            "model": "llama3.2",
            "created_at": "2026-01-01T00:00:00.000000Z",
            "message": {"role": "assistant", "content": "", "thinking": thought},
            "done": False,
        }
    )


TOOL_CALL = line(
    {
        "model": "llama3.2",
        "created_at": "2026-01-01T00:00:00.000000Z",
        "message": {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "count", "arguments": {"to": 3}}}],
        },
        "done": False,
    }
)
ERROR_LINE = line({"error": "an error was encountered while running the model: unexpected EOF"})
NOT_PULLED = {"error": "model 'llama3.2' not found"}

CONFORMANCE = [
    pytest.param([START, text("One"), text(", two"), END], "complete", "One, two", "", id="stop"),
    pytest.param(
        [thinking("Hmm."), text("One"), TOOL_CALL, text(""), text(", two"), END],
        "complete",
        "One, two",
        "",
        id="lines without text are skipped",
    ),
    pytest.param(
        [START, text("One"), done("length")],
        "truncated",
        "One",
        CUT_AT_LENGTH,
        id="length",
    ),
    pytest.param(
        [START, thinking("Still thinking."), done("length")],
        "truncated",
        "",
        NO_TEXT_AT_LENGTH,
        id="length spent thinking",
    ),
    pytest.param([done("load")], "error", "", EMPTY, id="load"),
    pytest.param([done("unload")], "error", "", EMPTY, id="unload"),
    pytest.param([START, text("One"), done(None)], "complete", "One", "", id="done alone"),
    pytest.param(
        [START, text("One"), done("a_reason_added_later")],
        "complete",
        "One",
        "",
        id="unknown done_reason",
    ),
    pytest.param([START, END], "error", "", EMPTY, id="stop without text"),
    pytest.param([START, text("One"), ERROR_LINE], "error", "One", CUT_OFF, id="error line"),
    pytest.param([START, text("One")], "error", "One", CUT_OFF, id="no done line"),
    pytest.param((404, NOT_PULLED), "error", "", str(error_for_status(404)), id="not pulled"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("wire", "status", "text", "message"), CONFORMANCE)
async def test_each_way_a_stream_ends_is_stored_and_shown_as_the_table_says(
    wire, status, text, message, user, conversation, connect, monkeypatch
):
    if isinstance(wire, tuple):
        server = Server(httpx.Response(wire[0], json=wire[1]))
    else:
        server = streaming(Body(wire))

    frames, stored = await reply_in_chat(
        model_for(server), user, conversation, connect, monkeypatch
    )

    assert (stored.status, stored.content, stored.error) == (status, text, message)
    assert (final_status(frames), live_text(frames)) == (status, text)
    assert message in html.unescape(frames[-1])
    assert ('name="action" value="retry"' in frames[-1]) == (status != "complete")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("ending", ["stop", "leave"])
async def test_stop_or_leaving_while_the_provider_is_silent_ends_the_reply_and_hangs_up(
    ending, user, conversation, connect, monkeypatch
):
    with SilentProvider(b"application/x-ndjson", START + text("One")) as provider:
        model = OllamaChat(
            base_url=provider.url,
            model="llama3.2",
            timeout=30,  # far longer than the test waits: only Stop can end the reply
            max_output_tokens=256,
        )

        frames, stored, latency = await end_while_the_provider_is_silent(
            ending, model, provider, user, conversation, connect, monkeypatch
        )

        assert (stored.status, stored.content) == ("stopped", "One")
        assert live_text(frames) == "One"
        assert provider.hung_up.wait(5)  # the upstream connection is closed
    print(f"{ending} with a silent provider: the reply ended {latency * 1000:.0f} ms later")
