"""Messages with attachments: richText, picture, audio, video, file, unknownMsgType, and card actions."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from edgecrab.testing.fakedingtalk.models import FakeApp
from edgecrab.testing.fakedingtalk.payloads.common import UNKNOWN_TEXT, PayloadBase, UserRef, filler, tiny_png


class MediaPayloads(PayloadBase):
    # other message types ----------------------------------------------------------------------------------
    def rich_text(
        self,
        user: UserRef,
        items: Sequence[str | bytes],
        *,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A richText message: ``str`` items are text segments, ``bytes`` items are pictures."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "richText", conversation_id, title, at_bot, ())
        segments: list[dict[str, str]] = []
        for item in items:
            if isinstance(item, bytes):
                code = self.register_media(the_app, item, content_type="image/png", file_name="image.png")
                segments.append(
                    {"pictureDownloadCode": "pic" + code, "downloadCode": code, "type": "picture"}
                )
            else:
                segments.append({"text": item})
        data["content"] = {"richText": segments}
        return self._apply(data, overrides)

    def picture(
        self,
        user: UserRef,
        *,
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A picture (msgtype ``picture``, not ``image``); downloads serve a PNG unless ``content``."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "picture", conversation_id, title, at_bot, ())
        code = self.register_media(
            the_app,
            content if content is not None else tiny_png(),
            content_type="image/png",
            file_name="image.png",
        )
        data["content"] = {"pictureDownloadCode": "pic" + code, "downloadCode": code}
        return self._apply(data, overrides)

    def audio(
        self,
        user: UserRef,
        recognition: str = "钉钉，让进步发生",
        *,
        content: bytes | None = None,
        duration: int | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A voice message carrying DingTalk's own transcript in ``content.recognition``."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "audio", conversation_id, title, at_bot, ())
        blob = content if content is not None else filler(b"#!AMR\n", self.state.settings.media_size)
        code = self.register_media(the_app, blob, content_type="audio/amr", file_name="voice.amr")
        data["content"] = {"downloadCode": code, "recognition": recognition}
        if duration is not None:
            data["content"]["duration"] = duration
        return self._apply(data, overrides)

    def video(
        self,
        user: UserRef,
        *,
        duration: str = "5",
        video_type: str = "mp4",
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A video; ``duration`` is a string, as DingTalk sends it."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "video", conversation_id, title, at_bot, ())
        blob = (
            content
            if content is not None
            else filler(b"\x00\x00\x00\x18ftypmp42", self.state.settings.media_size)
        )
        code = self.register_media(the_app, blob, content_type="video/mp4", file_name=f"video.{video_type}")
        data["content"] = {"duration": duration, "videoType": video_type, "downloadCode": code}
        return self._apply(data, overrides)

    def file(
        self,
        user: UserRef,
        file_name: str = "foobar.zip",
        *,
        content: bytes | None = None,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """A file message with ``spaceId``, ``fileName``, ``downloadCode`` and ``fileId``."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "file", conversation_id, title, at_bot, ())
        blob = content if content is not None else filler(b"PK\x03\x04", self.state.settings.media_size)
        code = self.register_media(the_app, blob, file_name=file_name)
        data["content"] = {
            "spaceId": str(self.state.rng.randrange(10**8, 10**9)),
            "fileName": file_name,
            "downloadCode": code,
            "fileId": str(self.state.rng.randrange(10**8, 10**9)),
        }
        return self._apply(data, overrides)

    def unknown(
        self,
        user: UserRef,
        *,
        conversation_id: str | None = None,
        title: str | None = None,
        at_bot: bool = True,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """What DingTalk sends for a message kind robots cannot receive (msgtype ``unknownMsgType``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        data = self._common(the_app, sender, "unknownMsgType", conversation_id, title, at_bot, ())
        data["ai_robot_sessionid"] = ""
        data["content"] = {"unknownMsgType": UNKNOWN_TEXT}
        return self._apply(data, overrides)

    def card_action(
        self,
        user: UserRef,
        out_track_id: str,
        *,
        action_ids: Sequence[str] = ("stop",),
        params: dict[str, Any] | None = None,
        conversation_id: str | None = None,
        app: FakeApp | str | None = None,
        **overrides: Any,
    ) -> dict[str, Any]:
        """Decoded ``data`` of a card button callback (push it with ``topic=CARD_CALLBACK_TOPIC``)."""
        the_app, sender = self.state.app(app), self.state.user(user)
        private = {"cardPrivateData": {"actionIds": list(action_ids), "params": params or {}}}
        data: dict[str, Any] = {
            "outTrackId": out_track_id,
            "corpId": the_app.corp_id,
            "userId": sender.staff_id,
            "userIdType": 1,
            "spaceType": "IM_GROUP" if conversation_id else "IM_ROBOT",
            "spaceId": conversation_id or sender.staff_id,
            "type": "actionCallback",
            "extension": json.dumps({}),
            "content": json.dumps(private, ensure_ascii=False),
        }
        return self._apply(data, overrides)
