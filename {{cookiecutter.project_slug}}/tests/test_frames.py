"""parse_frame turns any text into a Frame or a FrameError, never anything else."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.frames import ACTIONS, Frame, FrameError, parse_frame, storable_text

LIMITS = {"conversation_id": 7, "max_length": 4000, "max_bytes": 65536}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
frames = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from([*ACTIONS, "dance"]) | json_values,
        "message": st.text() | json_values,
        "conversation": st.sampled_from([7, "7", 8, "x"]) | json_values,
    },
)
texts = (
    st.text()
    | frames.map(json.dumps)
    | json_values.map(json.dumps)
    | st.integers(1, 5000).map(lambda depth: "[" * depth)
    | st.integers(1, 5000).map(lambda depth: '{"a":' * depth)
)


def check(text: str) -> None:
    try:
        frame = parse_frame(text, None, **LIMITS)
    except FrameError as error:
        assert str(error)  # every refusal says why
        return
    assert isinstance(frame, Frame) and frame.action in ACTIONS
    if frame.action == "send":
        assert 0 < len(frame.message) <= LIMITS["max_length"]
        assert "\x00" not in frame.message
        frame.message.encode("utf-8")  # storable: no lone surrogate


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts)
def test_any_text_frame_parses_or_fails_with_a_frame_error(text):
    check(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_binary_frame_is_refused_with_a_frame_error(data):
    with pytest.raises(FrameError, match="Binary frames"):
        parse_frame(None, data, **LIMITS)


@pytest.mark.parametrize(
    ("text", "explains"),
    [
        ("[" * 20_000, "nested too deeply"),
        ('{"message": "' + "x" * 70_000 + '"}', "the limit is 65536 bytes"),
        ('{"message": "' + "é" * 40_000 + '"}', "the limit is 65536 bytes"),
        ('{"message": "a\\ud800b"}', "lone UTF-16 surrogate"),
        ('{"message": "a\\u0000b"}', "NUL character"),
        ('{"message": "hi", "conversation": [7]}', "not open on this page"),
        ('{"message": "hi", "action": ["send"]}', "Unknown action"),
        ('{"message": "hi", "conversation": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
    ids=[
        "nested",
        "too-large",
        "too-large-in-bytes",
        "surrogate",
        "nul",
        "id-list",
        "action-list",
        "huge-int",
    ],
)
def test_a_hostile_frame_is_a_frame_error_with_a_clear_message(text, explains):
    with pytest.raises(FrameError, match=explains):
        parse_frame(text, None, **LIMITS)


def test_the_size_limit_counts_utf8_bytes_before_parsing():
    exactly = '{"message": "' + "x" * (100 - 15) + '"}'
    assert len(exactly.encode()) == 100
    assert parse_frame(exactly, None, conversation_id=7, max_length=4000, max_bytes=100).message
    with pytest.raises(FrameError, match="the limit is 99 bytes"):
        parse_frame(exactly, None, conversation_id=7, max_length=4000, max_bytes=99)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters() | st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d", "\ude00"])))
def test_any_model_text_becomes_storable(text):
    stored = storable_text(text)
    stored.encode("utf-8")
    assert "\x00" not in stored
