"""Text messages: DM, group @robot, bare @, and quoted replies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgecrab.testing.fakedingtalk.models import FakeApp, new_msg_id
from edgecrab.testing.fakedingtalk.payloads.common import DEFAULT_GROUP_ID, PayloadBase, UserRef, filler


class TextPayloads(PayloadBase):
    # text -------------------------------------------------------------------------------------------------
    def dm(
        self, user: UserRef, text: str, *, app: FakeApp | str | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """A one-to-one text message to the robot (conversationType ``"1"``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", None, None, False, ())
        data["text"] = {"content": text}
        return self._apply(data, overrides)

    def group(
        self,
        user: UserRef,
        text: str,
        *,
        conversation_id: str = DEFAULT_GROUP_ID,
        title: str | None = None,
        at_bot: bool = True,
        at_users: Sequence[UserRef] = (),
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A group text message; with ``at_bot``, content starts with a space and ``isInAtList`` is true."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", conversation_id, title, at_bot, at_users)
        data["text"] = {"content": self._text_body(text, True, at_bot)}
        return self._apply(data, overrides)

    def bare_at(
        self,
        user: UserRef,
        *,
        content: str = " ",
        conversation_id: str = DEFAULT_GROUP_ID,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A group message that is only "@robot": empty or whitespace content."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "text", conversation_id, None, True, ())
        data["text"] = {"content": content}
        return self._apply(data, overrides)

    def quoted(
        self,
        user: UserRef,
        text: str,
        *,
        quoted_text: str = "部署失败，报错 502",
        quoted_sender: UserRef | None = None,
        quoted_msgtype: str = "text",
        variant: str = "text",
        conversation_id: str | None = DEFAULT_GROUP_ID,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A quoted reply. ``variant="text"`` puts ``isReplyMsg``/``repliedMsg`` under ``text``; ``"content"``
        sends a richText message with them under ``content``. ``quoted_sender="bot"`` quotes the robot itself.
        """
        the_app, sender = self.state.app(app), self.state.user(user)
        group = conversation_id is not None
        msgtype = "richText" if variant == "content" else "text"
        data = self._common(the_app, sender, msgtype, conversation_id, title, at_bot, ())
        if quoted_sender == "bot":
            sender_id, sender_nick = the_app.chatbot_user_id, the_app.name
        else:
            others = [u for u in self.state.users if u is not sender and u.staff_id]
            author = self.state.user(quoted_sender) if quoted_sender is not None else (others or [sender])[0]
            sender_id, sender_nick = author.dingtalk_id, author.nick
        replied = {
            "msgType": quoted_msgtype,
            "msgId": new_msg_id(),
            "senderId": sender_id,
            "senderNick": sender_nick,
            "createdAt": data["createAt"] - 60_000,
            "content": self._quoted_content(the_app, quoted_msgtype, quoted_text),
        }
        body = self._text_body(text, group, at_bot)
        if variant == "content":
            data["content"] = {"richText": [{"text": body}], "isReplyMsg": True, "repliedMsg": replied}
        else:
            data["text"] = {"content": body, "isReplyMsg": True, "repliedMsg": replied}
        data["originalMsgId"] = replied["msgId"]
        return self._apply(data, overrides)

    def _quoted_content(self, app: FakeApp, msgtype: str, quoted_text: str) -> dict[str, Any]:
        if msgtype == "text":
            return {"text": quoted_text}
        if msgtype == "richText":
            return {"richText": [{"text": quoted_text}]}
        if msgtype == "interactiveCard":
            return {}
        code = self.register_media(app, filler(b"QUOTED", 64))
        content: dict[str, Any] = {"downloadCode": code}
        if msgtype == "file":
            content["fileName"] = quoted_text or "quoted.bin"
        return content
