"""The robot send APIs on the wire: what one send looks like, and what its answer means.

Pure functions with no I/O, for :class:`~edgecrab.dingtalk.rest.DingTalkSender`, which chooses the route,
paces the sends and retries them:

* :func:`openapi_body` builds the JSON of ``oToMessages/batchSend`` (a DM) or ``groupMessages/send`` (a
  group); the sessionWebhook's is :func:`~edgecrab.dingtalk.webhook.webhook_body`. :func:`encode_body`
  turns either into the bytes that are posted.
* :func:`webhook_result` and :func:`openapi_result` read an answer: a :class:`SendResult` when the chunk
  was accepted, else they raise :class:`~edgecrab.dingtalk.tokens.DingTalkError`, which knows whether
  trying again can help. Both APIs can answer HTTP 200 and still refuse: the sessionWebhook with a
  non-zero ``errcode``, the OpenAPI with ``invalidStaffIdList`` or ``flowControlledStaffIdList``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from edgecrab.dingtalk.tokens import DingTalkError, error_from_response
from edgecrab.dingtalk.webhook import append_mention
from edgecrab.events import ReplyRoute

BATCH_SEND_PATH = "/v1.0/robot/oToMessages/batchSend"
GROUP_SEND_PATH = "/v1.0/robot/groupMessages/send"


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of sending one chunk."""

    ok: bool
    via: str
    """``webhook``, ``batchSend``, ``groupSend``, or ``""`` when nothing was sent."""
    permanent: bool
    """True when sending the same chunk again cannot succeed (``460101`` means: split it smaller)."""
    code: str
    message: str
    request_id: str
    process_query_key: str = ""


def openapi_body(
    route: ReplyRoute, robot_code: str, text: str, title: str, fmt: str, mention_name: str = ""
) -> dict[str, Any]:
    """The batchSend (DM) or groupMessages/send (group) JSON. ``msgParam`` is a JSON *string*."""
    if mention_name:
        # groupMessages/send cannot @ anyone: name the asker in plain text instead.
        text = append_mention(text, mention_name, fmt)
    if fmt == "markdown":
        msg_key, param = "sampleMarkdown", {"title": title, "text": text}
    else:
        msg_key, param = "sampleText", {"content": text}
    body: dict[str, Any] = {"robotCode": robot_code}
    if route.is_group:
        body["openConversationId"] = route.conversation_id
    else:
        body["userIds"] = [route.sender_staff_id]
    body["msgKey"] = msg_key
    body["msgParam"] = _JSON.encode(param)
    return body


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""``json.dumps(..., ensure_ascii=False, separators=(",", ":"))`` without building an encoder per call."""


def encode_body(body: dict[str, Any]) -> bytes:
    """A send's JSON body as the bytes to post: compact, UTF-8, non-ASCII text not escaped."""
    return _JSON.encode(body).encode("utf-8")


def _webhook_ok(content: bytes) -> bool:
    """The sessionWebhook's plain ``{"errcode": 0, ...}``: success without building an error to say so.

    A subset of what :func:`error_from_response` reads as code ``"0"``; anything else takes that way.
    """
    try:
        data = json.loads(content)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and "code" not in data
        and "message" not in data
        and str(data.get("errcode")) == "0"
    )


def webhook_result(response: httpx.Response) -> SendResult:
    """The sessionWebhook's answer to one send, or :class:`DingTalkError` when the chunk was refused."""
    if response.is_success and _webhook_ok(response.content):
        return SendResult(True, "webhook", False, "", "", response.headers.get("x-acs-request-id", ""))
    err = error_from_response(response, "sessionWebhook")
    if response.is_success and err.code == "0":
        return SendResult(True, "webhook", False, "", "", err.request_id)
    if response.is_success and not err.code:
        err = DingTalkError(
            "sessionWebhook answered without an errcode",
            status=response.status_code,
            code="bad_response",
        )
    raise err


def openapi_result(response: httpx.Response, via: str, staff_id: str) -> SendResult:
    """The answer of batchSend or groupMessages/send (``via``) to one send, or :class:`DingTalkError`
    when the chunk was refused; ``staff_id`` is the recipient's, named when DingTalk says it is invalid."""
    request_id = response.headers.get("x-acs-request-id", "")
    if not response.is_success:
        raise error_from_response(response, via)
    try:
        data = json.loads(response.content)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise DingTalkError(
            f"{via}: response is not a JSON object",
            status=response.status_code,
            code="bad_response",
            request_id=request_id,
        )
    request_id = str(data.get("requestid") or request_id)
    for key, problem in (
        ("invalidStaffIdList", f"DingTalk says staff id {staff_id} is invalid"),
        ("flowControlledStaffIdList", "recipient is flow-controlled (too many messages)"),
    ):
        if data.get(key):
            raise DingTalkError(
                f"{via}: {problem}", status=response.status_code, code=key, request_id=request_id
            )
    return SendResult(True, via, False, "", "", request_id, str(data.get("processQueryKey") or ""))
