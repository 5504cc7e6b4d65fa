"""Turns what the browser sends into a request the consumer can act on, or a clear error.

Every frame is bounded before it is parsed (size), while it is parsed (nesting) and after
(encoding, characters the database refuses, length), so no frame can raise anything but
FrameError: the consumer answers it with the message and the connection lives on.
"""

import json
from dataclasses import dataclass
from typing import Literal

Action = Literal["send", "stop", "retry"]
ACTIONS: tuple[Action, ...] = ("send", "stop", "retry")


class FrameError(ValueError):
    """The frame cannot be acted on; the message is shown to the user."""


@dataclass(frozen=True)
class Frame:
    action: Action
    message: str = ""


def utf8_size(text: str, limit: int) -> int:
    """Bytes ``text`` takes as UTF-8 (lone surrogates count 3), computed only when needed.

    A str of n characters takes n to 4n bytes, so most frames are sized without encoding.
    """
    if len(text) * 4 <= limit:
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def parse_frame(
    text_data: str | None,
    bytes_data: bytes | None,
    *,
    conversation_id: int,
    max_length: int,
    max_bytes: int = 65536,
) -> Frame:
    """A Frame from one WebSocket message, or FrameError saying what is wrong with it.

    text_data/bytes_data: as Channels passes them (one is None). max_length: characters of
    a message (CHAT_MAX_MESSAGE_LENGTH); max_bytes: UTF-8 bytes of the whole frame
    (CHAT_MAX_FRAME_BYTES), checked before any parsing.
    """
    if text_data is None:
        raise FrameError("Binary frames are not accepted; send text.")
    if len(text_data) > max_bytes or utf8_size(text_data, max_bytes) > max_bytes:
        raise FrameError(f"That frame is too large; the limit is {max_bytes} bytes.")
    try:
        data = json.loads(text_data)
    except RecursionError:  # json's C scanner recurses once per [ or {
        raise FrameError("That frame is nested too deeply.") from None
    except ValueError:
        raise FrameError("That frame was not valid JSON.") from None
    if not isinstance(data, dict):
        raise FrameError("A frame must be a JSON object.")

    conversation = data.get("conversation")
    if conversation is not None and (
        not isinstance(conversation, (str, int)) or str(conversation) != str(conversation_id)
    ):
        raise FrameError("That conversation is not open on this page. Reload to continue.")

    action = data.get("action", "send")
    if not isinstance(action, str) or action not in ACTIONS:
        raise FrameError(f"Unknown action. Expected one of: {', '.join(ACTIONS)}.")
    if action != "send":
        return Frame(action=action)

    message = data.get("message")
    if not isinstance(message, str) or not message.strip():
        raise FrameError("Type a message before sending.")
    message = message.strip()
    if len(message) > max_length:
        raise FrameError(
            f"That message is {len(message)} characters long; the limit is {max_length}."
        )
    return Frame(action="send", message=storable(message))


def storable(message: str) -> str:
    """The message, if the database can store it and a page can show it.

    A JSON escape can smuggle in a lone surrogate ("\\ud800"), which UTF-8 cannot encode
    (UnicodeEncodeError on insert), or a NUL, which PostgreSQL refuses in text columns
    (https://www.postgresql.org/docs/current/datatype-character.html).
    """
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise FrameError(
            "That message contains an invalid character (a lone UTF-16 surrogate)."
        ) from None
    if "\x00" in message:
        raise FrameError("That message contains a NUL character, which cannot be stored.")
    return message


def storable_text(text: str) -> str:
    """Text from elsewhere (a model's reply) made storable: NUL and lone surrogates become
    U+FFFD, the replacement character. Surrogate pairs are joined first."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text
