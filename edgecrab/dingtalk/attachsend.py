"""Sending the ledger's attachment rows: upload, then a picture or a file message, or a note saying why not.

:class:`AttachmentSender` is the sender the delivery ledger is given: an ordinary text row goes to
:meth:`DingTalkSender.send <edgecrab.dingtalk.rest.DingTalkSender.send>` unchanged (one ``startswith``
tells them apart); an attachment row (:mod:`edgecrab.replies.attachments`) is read from the spool, uploaded
(:mod:`edgecrab.dingtalk.media_upload`) and sent, so it goes through the same ledger, order, pacing, rate
limiters, retries and restarts as text:

* a picture through the sessionWebhook as a markdown image of its ``@mediaId`` (the webhook carries only
  text, markdown, link and card messages; DingTalk renders a mediaId in a markdown image), falling back like
  text to the OpenAPI's ``sampleImageMsg``;
* a file through the OpenAPI's ``sampleFile`` only (no webhook message can carry one).

An attachment that cannot be delivered (its spool copy is gone, DingTalk refuses the upload or the message,
a DM to someone outside the organisation has no OpenAPI route for a file) becomes a short note sent in its
place the ordinary way, and a log line; the row then counts as delivered. Only a note that cannot be sent
either is a failure of the reply.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio.to_thread

from edgecrab.dingtalk.media_upload import upload_media
from edgecrab.dingtalk.rest import UNDELIVERABLE, DingTalkSender
from edgecrab.dingtalk.robotapi import SendResult
from edgecrab.dingtalk.tokens import TOO_LONG
from edgecrab.events import ReplyRoute
from edgecrab.replies.attachments import MARKER, AttachmentSpool, SpooledAttachment, read_row

log = logging.getLogger("edgecrab.dingtalk.attachsend")


def media_body(route: ReplyRoute, robot_code: str, att: SpooledAttachment, media_id: str) -> dict[str, Any]:
    """The OpenAPI send of an uploaded picture (``sampleImageMsg``) or file (``sampleFile``)."""
    if att.kind == "image":
        key, param = "sampleImageMsg", {"photoURL": media_id}
    else:
        extension = att.name.rsplit(".", 1)[-1].lower() if "." in att.name else ""
        key, param = (
            "sampleFile",
            {"mediaId": media_id, "fileName": att.name, "fileType": extension or "file"},
        )
    body: dict[str, Any] = {"robotCode": robot_code}
    if route.is_group:
        body["openConversationId"] = route.conversation_id
    else:
        body["userIds"] = [route.sender_staff_id]
    body["msgKey"] = key
    body["msgParam"] = json.dumps(param, ensure_ascii=False, separators=(",", ":"))
    return body


def image_markdown(att: SpooledAttachment, media_id: str) -> dict[str, Any]:
    """The sessionWebhook message showing an uploaded picture."""
    alt = att.name.replace("[", "(").replace("]", ")")
    return {"msgtype": "markdown", "markdown": {"title": att.name, "text": f"![{alt}]({media_id})"}}


class AttachmentSender:
    """The delivery ledger's sender: text rows as before, attachment rows uploaded and sent."""

    def __init__(self, sender: DingTalkSender, spool: AttachmentSpool) -> None:
        self.sender = sender
        self.spool = spool
        self.sent = 0
        """Attachments delivered as pictures or files (not as notes)."""

    async def send(
        self, route: ReplyRoute, *, text: str, title: str, mention: bool, fmt: str = "markdown"
    ) -> SendResult:
        if not text.startswith(MARKER):
            return await self.sender.send(route, text=text, title=title, mention=mention, fmt=fmt)
        row = read_row(text)
        if not isinstance(row, SpooledAttachment):
            log.error("[attachments] to conversation %s: %s", route.conversation_id, row)
            return await self._note(route, "⚠️ An attachment was not sent: the gateway lost track of it.", fmt)
        return await self._attachment(route, row, fmt)

    async def _attachment(self, route: ReplyRoute, att: SpooledAttachment, fmt: str) -> SendResult:
        try:
            data = await anyio.to_thread.run_sync(self.spool.path(att).read_bytes)
        except OSError as exc:
            log.error(
                "[attachments] %s to conversation %s: spool copy unreadable: %s",
                att.name,
                route.conversation_id,
                exc,
            )
            return await self._note(
                route, f"⚠️ {att.name} was not sent: the gateway's copy of it is gone.", fmt
            )
        uploaded, media_id = await upload_media(
            self.sender, route, data, name=att.name, kind=att.kind, mime=att.mime
        )
        if not uploaded.ok:
            return await self._failed(route, att, "DingTalk refused the upload", uploaded, fmt)
        result = await self._deliver(route, att, media_id)
        if not result.ok:
            why = "DingTalk refused the message"
            if result.code == UNDELIVERABLE:
                why = "files go only through DingTalk's OpenAPI, which needs the recipient's staff id"
            return await self._failed(route, att, why, result, fmt)
        self.sent += 1
        log.info(
            "[attachments] %s %s sent to conversation %s via %s",
            att.kind,
            att.name,
            route.conversation_id,
            result.via,
        )
        return result

    async def _deliver(self, route: ReplyRoute, att: SpooledAttachment, media_id: str) -> SendResult:
        sender = self.sender
        webhook = sender._webhook_usable(route) if att.kind == "image" else None
        if webhook is not None:
            result = await sender._send_webhook(route, webhook, image_markdown(att, media_id))
            if result.ok:
                return result
            log.info("[dingtalk] falling back to OpenAPI for conversation %s", route.conversation_id)
        return await sender._openapi(
            route, media_body(route, route.robot_code or sender.robot_code, att, media_id)
        )

    async def _failed(
        self, route: ReplyRoute, att: SpooledAttachment, why: str, result: SendResult, fmt: str
    ) -> SendResult:
        code = f" ({result.code})" if result.code and result.code != UNDELIVERABLE else ""
        log.error(
            "[attachments] %s %s to conversation %s not sent: %s%s: %s",
            att.kind,
            att.name,
            route.conversation_id,
            why,
            code,
            result.message,
        )
        return await self._note(route, f"⚠️ {att.name} was not sent: {why}{code}.", fmt)

    async def _note(self, route: ReplyRoute, note: str, fmt: str) -> SendResult:
        result = await self.sender.send(route, text=note, title=note[:20], mention=False, fmt=fmt)
        if result.code == TOO_LONG:  # a one-line note is never too long; never ask the ledger to split it
            return SendResult(False, result.via, True, "note_refused", result.message, result.request_id)
        return result
