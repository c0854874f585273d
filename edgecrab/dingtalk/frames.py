"""DingTalk Stream frames: the websocket envelope, its JSON-in-a-string ``data``, and the acks.

Pure functions with no I/O:

* :func:`parse_frame` validates one websocket text frame into a :class:`Frame`;
* :func:`decode_data` / :func:`decode_payload` turn its ``data`` into a dict, lone surrogates replaced
  (:func:`scrub_surrogates`);
* :func:`ack_frame` / :func:`ping_ack` build the acks the server expects.

Every defect in a frame or its data (not UTF-8, bad JSON, a header that is a list) raises :class:`FrameError`
with a short ``reason``; nothing else escapes, so the connection loop can log the reason and move on.
:func:`edgecrab.dingtalk.convert.to_message` raises the same error for a payload it cannot use. The
constants are the protocol's wire values (protocol reference, sections 3 and 4). edgecrab does not depend on
the official ``dingtalk-stream`` SDK; the tests use it as a conformance oracle and check that these values
equal its own (``tests/e2e/test_sdk_oracle.py``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

TYPE_SYSTEM = "SYSTEM"
TYPE_EVENT = "EVENT"
TYPE_CALLBACK = "CALLBACK"
TOPIC_PING = "ping"
TOPIC_DISCONNECT = "disconnect"
TOPIC_ROBOT_MESSAGE = "/v1.0/im/bot/messages/get"
TOPIC_ROBOT_DELEGATE = "/v1.0/im/bot/messages/delegate"
STATUS_OK = 200
STATUS_BAD_REQUEST = 400
STATUS_NOT_IMPLEMENT = 404
STATUS_SYSTEM_EXCEPTION = 500
CONTENT_TYPE_JSON = "application/json"
ROBOT_ACK_DATA = '{"response": null}'


class FrameError(ValueError):
    """A frame or payload the gateway cannot use; ``reason`` is short and safe to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Frame:
    """A validated Stream frame; ``data_text`` is still the JSON string (see :func:`decode_data`)."""

    type: str
    headers: dict[str, str] = field(default_factory=dict)
    data_text: str = "{}"
    spec_version: str = ""

    @property
    def topic(self) -> str:
        return self.headers.get("topic", "")

    @property
    def message_id(self) -> str | None:
        return self.headers.get("messageId")


def _scalar_text(value: Any) -> str | None:
    """JSON scalars as header text (``true``, ``12``); None for containers."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


def parse_frame(raw: str | bytes) -> Frame:
    """Validate the envelope of one websocket text frame."""
    if isinstance(raw, bytes | bytearray):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("frame is not UTF-8") from None
    if not isinstance(raw, str):
        raise FrameError("frame is not text")
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        raise FrameError("frame is not JSON") from None
    if not isinstance(obj, dict):
        raise FrameError("frame is not a JSON object")

    ftype = obj.get("type")
    if ftype is None:
        raise FrameError("frame has no type")
    if not isinstance(ftype, str):
        raise FrameError("frame type is not a string")

    raw_headers = obj.get("headers")
    if raw_headers is None:
        raise FrameError("frame has no headers")
    if not isinstance(raw_headers, dict):
        raise FrameError("headers is not an object")
    headers: dict[str, str] = {}
    for key, value in raw_headers.items():
        if value is None:  # a null header is the same as an absent one
            continue
        text = _scalar_text(value)
        if text is None:
            raise FrameError(f"header {key!r} is not a string")
        headers[key] = text

    data = obj.get("data")
    if data is None or data == "":
        data = "{}"  # what the SDK decodes an empty or absent data to
    elif not isinstance(data, str):
        raise FrameError("data is not a JSON string")

    spec = obj.get("specVersion")
    spec_version = _scalar_text(spec) or ""
    return Frame(type=ftype, headers=headers, data_text=data, spec_version=spec_version)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub_surrogates(value: Any) -> Any:
    """Replace lone surrogates (valid as JSON escapes, but not encodable as UTF-8) with U+FFFD.

    Left in, they pass through the gateway until the first write to storage or to the network raises
    ``UnicodeEncodeError``.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {scrub_surrogates(k): scrub_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_surrogates(v) for v in value]
    return value


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""How a surrogate can get into decoded JSON: as an escape (decoded websocket text has none of its own)."""


def decode_data(frame: Frame) -> dict[str, Any]:
    """The frame's ``data`` as a dict (lone surrogates replaced, see :func:`scrub_surrogates`)."""
    return decode_payload(frame.data_text)


def decode_payload(text: str) -> dict[str, Any]:
    """A callback's ``data`` JSON text as a dict, lone surrogates replaced; :class:`FrameError` if it is
    not a JSON object. Text without a surrogate escape is not walked again (most of it)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise FrameError(f"data is not JSON: {getattr(exc, 'msg', exc)}") from None
    except RecursionError:
        raise FrameError("data is not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise FrameError("data is not an object")
    if _SURROGATE_ESCAPE.search(text) is None:
        return data
    try:
        return scrub_surrogates(data)  # type: ignore[no-any-return]
    except RecursionError:
        raise FrameError("data is not JSON: nested too deeply") from None


def ack_frame(
    message_id: str | None,
    *,
    code: int = STATUS_OK,
    message: str = "OK",
    data: str = ROBOT_ACK_DATA,
) -> str:
    """The ack for one frame; ``messageId`` is left out when the frame had none (disconnect)."""
    if message_id is not None and code == STATUS_OK and message == "OK" and data == ROBOT_ACK_DATA:
        return _ACK_OK_HEAD + json.dumps(message_id) + _ACK_OK_TAIL  # every callback's: encode the id only
    headers: dict[str, str] = {"contentType": CONTENT_TYPE_JSON}
    if message_id is not None:
        headers["messageId"] = message_id
    return json.dumps({"code": code, "headers": headers, "message": message, "data": data})


_ACK_OK_HEAD, _ACK_OK_TAIL = json.dumps(
    {"code": STATUS_OK, "headers": {"contentType": CONTENT_TYPE_JSON, "messageId": "\0"}, "message": "OK",
     "data": ROBOT_ACK_DATA}
).split('"\\u0000"')
"""The usual ack (:func:`ack_frame` with its defaults) around its message id: the same text, the id encoded
alone (one ack a callback, on the ack path)."""


def ping_ack(frame: Frame) -> str:
    """The reply to a SYSTEM ping: the same ``data`` (its ``opaque``) echoed back."""
    return ack_frame(frame.message_id, data=frame.data_text)
