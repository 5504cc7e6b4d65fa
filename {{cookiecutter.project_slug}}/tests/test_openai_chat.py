"""OpenAIChat against the real SDK, with HTTP answered by a mock transport or a loopback socket.

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
from chat.llm.openai_chat import OpenAIChat
from chat.models import Message

from .conftest import (
    SilentProvider,
    end_while_the_provider_is_silent,
    final_status,
    live_text,
    read_reply,
    reply_in_chat,
)

API_KEY = "sk-test-SECRET-123"
SYSTEM = "You are terse."
HISTORY = [
    ChatMessage("user", "Hi"),
    ChatMessage("assistant", "Hello!"),
    ChatMessage("user", "Count to three"),
]


def sse(chunk: dict) -> bytes:
    return f"data: {json.dumps(chunk)}\n\n".encode()


def completion_chunk(*choices: dict, **fields) -> bytes:
    """One chunk of a Chat Completions stream, as the API sends it."""
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "gpt-5-mini",
            "choices": list(choices),
            **fields,
        }
    )


def event(content: str | None, finish_reason: str | None = None) -> bytes:
    delta = {} if content is None else {"content": content}
    return completion_chunk({"index": 0, "delta": delta, "finish_reason": finish_reason})


def finish(reason: str) -> list[bytes]:
    """The end of a stream: the finish_reason chunk, the usage chunk and [DONE]."""
    return [event(None, finish_reason=reason), *END[1:]]


START = sse(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": "gpt-5-mini",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        ],
    }
)
END = [
    event(None, finish_reason="stop"),
    sse(  # the usage chunk, which has no choices
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1767225600,
            "model": "gpt-5-mini",
            "choices": [],
            "usage": {"prompt_tokens": 31, "completion_tokens": 5, "total_tokens": 36},
        }
    ),
    b"data: [DONE]\n\n",
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


def model_for(server: Server) -> OpenAIChat:
    transport = httpx2.MockTransport(server)
    return OpenAIChat(
        api_key=API_KEY,
        base_url="https://api.openai.test/v1",
        model="gpt-5-mini",
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


def reply(model: OpenAIChat) -> tuple[list[str], ProviderError | None]:
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


def first_delta_then_close(model: OpenAIChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""

    async def read() -> tuple[str, bool]:
        stream = model.stream(SYSTEM, HISTORY)
        first = await anext(stream)
        await stream.aclose()
        return first, body.closed

    return asyncio.run(read())
{%- else %}


def reply(model: OpenAIChat) -> tuple[list[str], ProviderError | None]:
    """The deltas the model yielded, and the error it ended with, if any."""
    deltas: list[str] = []
    try:
        for delta in model.stream(SYSTEM, HISTORY):
            deltas.append(delta)
    except ProviderError as error:
        return deltas, error
    return deltas, None


def first_delta_then_close(model: OpenAIChat, body: Body) -> tuple[str, bool]:
    """The first delta, and whether the body was closed by the time closing the stream returned."""
    stream = model.stream(SYSTEM, HISTORY)
    first = next(stream)
    stream.close()
    return first, body.closed
{%- endif %}


def test_streams_the_deltas_and_sends_prompt_history_model_and_limit():
    body = Body(
        [START, event("One"), event(""), event(", two"), event(None), event(", three."), *END]
    )
    server = streaming(body)

    deltas, error = reply(model_for(server))

    assert (deltas, error) == (["One", ", two", ", three."], None)
    [request] = server.requests
    assert request.url == "https://api.openai.test/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(request.content) == {
        "model": "gpt-5-mini",
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Count to three"},
        ],
        "max_completion_tokens": 256,
        "stream": True,
    }
    assert body.closed


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, str(error_for_status(401))),
        (429, str(error_for_status(429))),
        (500, str(error_for_status(500))),
    ],
)
def test_an_error_status_becomes_a_message_without_the_key(status, message):
    error_body = {
        "error": {
            "message": f"Incorrect API key provided: {API_KEY}.",
            "type": "invalid_request_error",
            "code": "invalid_api_key",
        }
    }
    server = Server(httpx2.Response(status, json=error_body))

    deltas, error = reply(model_for(server))

    assert deltas == []
    assert str(error) == message
    assert API_KEY not in str(error)


def test_a_provider_that_does_not_answer_in_time_times_out():
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        model = OpenAIChat(
            api_key=API_KEY,
            base_url=f"http://127.0.0.1:{port}/v1",
            model="gpt-5-mini",
            timeout=0.2,
            max_output_tokens=256,
            max_retries=0,
        )

        deltas, error = reply(model)

    assert (deltas, str(error)) == ([], TIMED_OUT)


def test_a_provider_that_refuses_the_connection_is_unreachable():
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    model = OpenAIChat(
        api_key=API_KEY,
        base_url=f"http://127.0.0.1:{port}/v1",
        model="gpt-5-mini",
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
            [START, event("One"), event(", two")],
            httpx2.RemoteProtocolError("peer closed connection without sending complete body"),
            CUT_OFF,
            id="connection dropped",
        ),
        pytest.param(
            [START, event("One"), event(", two"), b'data: {"id": "chatcmpl-1", "choi\n\n'],
            None,
            CUT_OFF,
            id="malformed event",
        ),
        pytest.param(
            [START, event("One"), event(", two")],
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
    body = Body([START, event("One"), event(", two"), event(", three."), *END])

    first, closed = first_delta_then_close(model_for(streaming(body)), body)

    assert (first, closed) == ("One", True)
    assert body.sent == 2  # the rest of the reply was never read
{%- if cookiecutter.consumer == "async" %}


async def test_cancelling_the_task_waiting_for_the_next_delta_closes_the_upstream_response():
    body = StalledBody([START, event("One")])
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
    settings.LLM_BASE_URL = "https://llm.example.test/v1"
    settings.LLM_MODEL = "gpt-5-nano"
    settings.LLM_TIMEOUT = 7.5
    settings.LLM_MAX_OUTPUT_TOKENS = 100
    settings.LLM_REASONING_EFFORT = "minimal"

    model = OpenAIChat.from_settings()

    assert (model.label, model.is_demo) == ("gpt-5-nano via OpenAI", False)
    assert (model.model, model.max_output_tokens) == ("gpt-5-nano", 100)
    assert model.reasoning_effort == "minimal"
    assert model.client.api_key == API_KEY
    assert model.client.base_url == "https://llm.example.test/v1/"
    assert model.client.timeout == 7.5
    assert OpenAIChat.from_settings().client is model.client


# Through the chat: the real SDK behind the real socket, each fault at the HTTP level.


@pytest.fixture
def silent_url():
    """A server that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/v1"


def refusing_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as closed:
        port = closed.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def failing_model(fault: str, silent_url: str) -> OpenAIChat:
    """A model whose next reply fails with this fault."""
    if fault in ("401", "429", "500"):
        # The API echoes (part of) the key back; none of it may reach the user.
        error_body = {
            "error": {
                "message": f"Incorrect API key provided: {API_KEY}.",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
        return model_for(Server(httpx2.Response(int(fault), json=error_body)))
    if fault == "broken mid-stream":
        dropped = httpx2.RemoteProtocolError("peer closed connection without sending complete body")
        return model_for(streaming(Body([START, event("One"), event(", two")], dropped)))
    return OpenAIChat(
        api_key=API_KEY,
        base_url=silent_url if fault == "timeout" else refusing_url(),
        model="gpt-5-mini",
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

    server = streaming(Body([START, event("One"), event(", two"), event(", three."), *END]))
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
    assert not any(API_KEY in frame for frame in retried)


# The conformance table: each way an OpenAI (or compatible) stream can end, as the bytes arrive,
# and what the chat stores and shows for it. A quirk found later is one more row.
# https://platform.openai.com/docs/api-reference/chat-streaming/streaming

AZURE_PROMPT_FILTER = completion_chunk(  # Azure OpenAI sends its prompt verdict first
    prompt_filter_results=[{"prompt_index": 0, "content_filter_results": {}}]
)
AZURE_ANNOTATION = completion_chunk(  # Azure's content-filter annotation: a choice with no delta
    {"index": 0, "finish_reason": None, "content_filter_results": {"hate": {"filtered": False}}}
)
NULL_DELTA = completion_chunk({"index": 0, "delta": None, "finish_reason": None})
REASONING = completion_chunk(  # vLLM, DeepSeek, OpenRouter: reasoning beside the content
    {"index": 0, "delta": {"reasoning_content": "Let me count."}, "finish_reason": None}
)
ERROR_IN_STREAM = sse(
    {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
        }
    }
)
PROMPT_FILTERED = {  # Azure OpenAI: the prompt is refused before any stream
    "error": {
        "message": "The response was filtered due to the prompt triggering content policy.",
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
    }
}

CONFORMANCE = [
    pytest.param(
        [START, event("One"), event(", two"), *END], "complete", "One, two", "", id="stop"
    ),
    pytest.param(
        [
            AZURE_PROMPT_FILTER,
            START,
            event("One"),
            AZURE_ANNOTATION,
            NULL_DELTA,
            REASONING,
            event(", two"),
            *END,
        ],
        "complete",
        "One, two",
        "",
        id="chunks without text are skipped",
    ),
    pytest.param(
        [START, event("One"), event(", two"), *finish("length")],
        "truncated",
        "One, two",
        CUT_AT_LENGTH,
        id="length after text",
    ),
    pytest.param(
        [START, REASONING, *finish("length")],
        "truncated",
        "",
        NO_TEXT_AT_LENGTH,
        id="length spent on reasoning",
    ),
    pytest.param(
        [START, event("One"), *finish("content_filter")],
        "filtered",
        "One",
        FILTERED,
        id="content_filter",
    ),
    pytest.param(
        [START, event("One"), *finish("tool_calls")],
        "complete",
        "One",
        "",
        id="tool_calls",
    ),
    pytest.param(
        [START, *finish("function_call")], "error", "", EMPTY, id="function_call, no text"
    ),
    pytest.param([START, *END], "error", "", EMPTY, id="stop without text"),
    pytest.param(
        [START, event("One"), *finish("a_reason_added_later")],
        "complete",
        "One",
        "",
        id="unknown finish_reason",
    ),
    pytest.param(
        [START, event("One"), *finish("error")],
        "error",
        "One",
        CUT_OFF,
        id="error finish_reason",
    ),
    pytest.param(
        [START, event("One"), ERROR_IN_STREAM],
        "error",
        "One",
        CUT_OFF,
        id="error object in stream",
    ),
    pytest.param(
        [START, event("One"), b"data: [DONE]\n\n"],
        "error",
        "One",
        CUT_OFF,
        id="no finish_reason",
    ),
    pytest.param([START, event("One")], "error", "One", CUT_OFF, id="stream ends early"),
    pytest.param((400, PROMPT_FILTERED), "filtered", "", BLOCKED, id="prompt filtered (Azure)"),
]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("wire", "status", "text", "message"), CONFORMANCE)
async def test_each_way_a_stream_ends_is_stored_and_shown_as_the_table_says(
    wire, status, text, message, user, conversation, connect, monkeypatch
):
    if isinstance(wire, tuple):
        server = Server(httpx2.Response(wire[0], json=wire[1]))
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
    with SilentProvider(b"text/event-stream", START + event("One")) as provider:
        model = OpenAIChat(
            api_key=API_KEY,
            base_url=f"{provider.url}/v1",
            model="gpt-5-mini",
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
