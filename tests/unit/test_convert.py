"""Frames and robot payloads -> Frame / Message (edgecrab.dingtalk.frames, edgecrab.dingtalk.convert).

The sample frames in ``tests/data/frames`` are converted and checked field by field, then snapshotted
whole; the invalid ones must each be rejected at the right stage with a precise reason; hypothesis feeds
arbitrary and mutated payloads and asserts that only a Message or a FrameError ever comes out.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecrab.dingtalk.convert import QUOTE_UNAVAILABLE, to_message
from edgecrab.dingtalk.frames import (
    Frame,
    FrameError,
    ack_frame,
    decode_data,
    decode_payload,
    parse_frame,
    ping_ack,
)
from edgecrab.events import Attachment, Mention, Message, Part, Quote

FRAMES = Path(__file__).parents[1] / "data" / "frames"
INVALID = FRAMES / "invalid"
BOT_UID = "$:LWCP_v1:$Ye+/QnqHtPJ6FGksGAAsQyD+nsGwOaAd"
CORP = "dingc5344d64bd47d252"
ROBOT = "dingaxxxxxxxxxxx1tv4f0c"


def load_frame(name: str) -> Frame:
    return parse_frame((FRAMES / f"{name}.json").read_bytes())


def load_data(name: str) -> dict[str, Any]:
    return decode_data(load_frame(name))


def convert_sample(name: str) -> Message:
    frame = load_frame(name)
    return to_message(decode_data(frame), stream_message_id=frame.message_id or "")


ROBOT_SAMPLES = sorted(
    p.stem for p in FRAMES.glob("*.json") if json.loads(p.read_text("utf-8"))["type"] == "CALLBACK"
)


# --------------------------------------------------------------------------- frames


def test_callback_frame_envelope() -> None:
    frame = load_frame("dm_text")
    assert frame.type == "CALLBACK"
    assert frame.spec_version == "1.0"
    assert frame.topic == "/v1.0/im/bot/messages/get"
    assert frame.message_id == "212b9d7c_165f_19bfa1a500a_1461def"
    assert frame.headers["time"] == "1769851697756"
    assert frame.headers["connectionId"] == "2f9c95bd-fe85-11f0-bee8-0eb3b764c0bb"
    assert isinstance(frame.data_text, str)
    assert decode_data(frame)["msgId"] == "msgMxpQ+qegFQ4MpgOyu0UFrQ=="


def test_ping_is_acked_by_echoing_its_data() -> None:
    frame = load_frame("ping")
    assert (frame.type, frame.topic, frame.spec_version) == ("SYSTEM", "ping", "")
    ack = json.loads(ping_ack(frame))
    assert ack == {
        "code": 200,
        "headers": {"contentType": "application/json", "messageId": "213d841d_972_1898bb26334_70a7"},
        "message": "OK",
        "data": '{"opaque" : "123-dsfs"}',
    }
    assert json.loads(ack["data"])["opaque"] == "123-dsfs"


def test_disconnect_has_no_message_id_and_its_ack_carries_none() -> None:
    frame = load_frame("disconnect")
    assert (frame.type, frame.topic, frame.message_id) == ("SYSTEM", "disconnect", None)
    assert decode_data(frame) == {"reason": "connection is expired"}
    ack = json.loads(ack_frame(frame.message_id, data=frame.data_text))
    assert ack["headers"] == {"contentType": "application/json"}


def test_event_frame_keeps_every_header() -> None:
    frame = load_frame("event")
    assert frame.type == "EVENT"
    assert frame.headers["eventType"] == "user_add_org"
    assert frame.headers["eventBornTime"] == "1683533823336"
    assert decode_data(frame)["userId"] == ["015xxxx227"]


def test_robot_ack_is_the_documented_form() -> None:
    assert json.loads(ack_frame("mid_1")) == {
        "code": 200,
        "headers": {"contentType": "application/json", "messageId": "mid_1"},
        "message": "OK",
        "data": '{"response": null}',
    }
    # The usual ack is made from a template: the same text as the generic path, whatever the id.
    for mid in ("mid_1", "", 'quote " backslash \\ 中文 \u2028', "x" * 300):
        generic = {"code": 200, "headers": {"contentType": "application/json", "messageId": mid}}
        assert ack_frame(mid) == json.dumps({**generic, "message": "OK", "data": '{"response": null}'})
    not_implemented = json.loads(ack_frame("mid_2", code=404, message="not implement", data="{}"))
    assert (not_implemented["code"], not_implemented["message"], not_implemented["data"]) == (
        404,
        "not implement",
        "{}",
    )


def test_header_scalars_are_coerced_and_nulls_dropped() -> None:
    raw = json.dumps(
        {
            "type": "CALLBACK",
            "headers": {"time": 1769851697756, "retry": True, "ratio": 0.5, "messageId": None},
        }
    )
    frame = parse_frame(raw)
    assert frame.headers == {"time": "1769851697756", "retry": "true", "ratio": "0.5"}
    assert frame.message_id is None
    assert frame.data_text == "{}"  # absent data decodes to an empty object, as in the SDK
    assert decode_data(frame) == {}


def test_empty_data_string_means_empty_object() -> None:
    frame = parse_frame('{"type":"SYSTEM","headers":{"topic":"ping"},"data":""}')
    assert decode_data(frame) == {}


def test_unknown_frame_type_is_kept() -> None:
    frame = parse_frame('{"type":"KEEPALIVE","headers":{"topic":"KEEPALIVE"}}')
    assert frame.type == "KEEPALIVE"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe{}", "frame is not UTF-8"),
        ("", "frame is not JSON"),
        ("[" * 100_000, "frame is not JSON"),
        ('"CALLBACK"', "frame is not a JSON object"),
        ('{"type": 3, "headers": {}}', "frame type is not a string"),
        ('{"type": "CALLBACK", "headers": {"topic": {"a": 1}}}', "header 'topic' is not a string"),
        ('{"type": "CALLBACK", "headers": {}, "data": 12}', "data is not a JSON string"),
    ],
)
def test_parse_frame_reasons(raw: str | bytes, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        parse_frame(raw)
    assert caught.value.reason == reason
    assert isinstance(caught.value, ValueError)


def test_decode_data_deep_nesting_is_a_frame_error() -> None:
    frame = Frame(type="CALLBACK", headers={}, data_text="[" * 100_000)
    with pytest.raises(FrameError, match="data is not JSON"):
        decode_data(frame)


# --------------------------------------------------------------------------- invalid samples

# file stem -> (stage that must reject it, the reason it must give)
INVALID_EXPECTED: dict[str, tuple[str, str]] = {
    "not_json": ("parse_frame", "frame is not JSON"),
    "frame_not_object": ("parse_frame", "frame is not a JSON object"),
    "type_missing": ("parse_frame", "frame has no type"),
    "headers_missing": ("parse_frame", "frame has no headers"),
    "headers_not_object": ("parse_frame", "headers is not an object"),
    "header_value_list": ("parse_frame", "header 'topic' is not a string"),
    "data_not_string": ("parse_frame", "data is not a JSON string"),
    "data_not_json": ("decode_data", "data is not JSON: Expecting property name enclosed in double quotes"),
    "data_not_object": ("decode_data", "data is not an object"),
    "missing_msgId": ("to_message", "missing msgId"),
    "missing_conversationId": ("to_message", "missing conversationId"),
    "missing_senderId": ("to_message", "missing senderId"),
    "missing_msgtype": ("to_message", "missing msgtype"),
    "text_is_list": ("to_message", "text is not an object"),
    "content_not_object": ("to_message", "content is not an object"),
    "rich_text_not_list": ("to_message", "content.richText is not a list"),
    "conversation_type_bad": ("to_message", "conversationType is not 1 or 2"),
    "at_users_not_list": ("to_message", "atUsers is not a list"),
    "create_at_not_number": ("to_message", "createAt is not a number"),
}


def test_every_invalid_sample_has_an_expectation() -> None:
    assert sorted(p.stem for p in INVALID.iterdir()) == sorted(INVALID_EXPECTED)


@pytest.mark.parametrize("name", sorted(INVALID_EXPECTED))
def test_invalid_sample_is_rejected_at_the_right_stage(name: str) -> None:
    stage, reason = INVALID_EXPECTED[name]
    (path,) = INVALID.glob(f"{name}.*")
    raw = path.read_bytes()
    if stage == "parse_frame":
        with pytest.raises(FrameError) as caught:
            parse_frame(raw)
    else:
        frame = parse_frame(raw)
        if stage == "decode_data":
            with pytest.raises(FrameError) as caught:
                decode_data(frame)
        else:
            data = decode_data(frame)
            with pytest.raises(FrameError) as caught:
                to_message(data)
    assert caught.value.reason.startswith(reason), caught.value.reason


# --------------------------------------------------------------------------- valid samples


def test_dm_text() -> None:
    m = convert_sample("dm_text")
    assert m.id == "msgMxpQ+qegFQ4MpgOyu0UFrQ=="
    assert m.robot == ROBOT
    assert (m.conversation.id, m.conversation.is_group, m.conversation.title) == (
        "cidJ8k435QAsxsxUvwst7NoMHCWTc0OaNCfYyGOsDesCH0=",
        False,
        "",
    )
    assert m.sender.id == "manager807"
    assert m.sender.name == "张三"
    assert m.sender.dingtalk_id == "$:LWCP_v1:$KC4x+zZNIw8FgyDsRlX434RPlQVWle8+"
    assert m.sender.corp_id == CORP
    assert m.sender.is_admin is True
    assert (m.text, m.msgtype, m.bot_mentioned, m.mentions) == ("hello DingTalk!", "text", False, ())
    assert m.created_at == pytest.approx(1769851697.611)
    assert m.bot_corp_id == CORP
    assert m.stream_message_id == "212b9d7c_165f_19bfa1a500a_1461def"
    assert (m.quote, m.attachments, m.unsupported) == (None, (), False)
    assert m.route is not None
    assert m.route.robot_code == ROBOT
    assert m.route.conversation_id == m.conversation.id
    assert m.route.is_group is False
    assert (m.route.sender_staff_id, m.route.sender_name) == ("manager807", "张三")
    assert m.route.session_webhook.startswith("https://oapi.dingtalk.com/robot/sendBySession?session=")
    assert m.route.session_webhook_expires_at == pytest.approx(1769851697.611 + 5400.133)


def test_group_text_at() -> None:
    m = convert_sample("group_text_at")
    assert m.conversation.is_group is True
    assert m.conversation.title == "测试群"
    assert m.bot_mentioned is True
    assert m.text == "测试数据 please ask Tom"  # the leading space DingTalk leaves is gone
    # The robot's own entry (equal to chatbotUserId) is not a mention of someone else.
    assert m.mentions == (Mention(dingtalk_id="$:LWCP_v1:$Zq1xMemberTom0aB9==", staff_id="16650123698"),)
    assert m.route is not None and m.route.is_group is True
    assert m.sender.is_admin is False


def test_group_bare_at_is_an_empty_turn_not_an_error() -> None:
    m = convert_sample("group_bare_at")
    assert (m.text, m.bot_mentioned, m.mentions, m.unsupported) == ("", True, (), False)


def test_rich_text() -> None:
    m = convert_sample("rich_text")
    assert m.msgtype == "richText"
    assert m.text == "这个问题示例图如下：\n通过以上示意图可以明白完整的交互流程"
    assert m.attachments == (Attachment(kind="picture", download_code="mIofexample7A=="),)


def test_rich_text_harmony_duplicate_mention_is_stripped() -> None:
    m = convert_sample("rich_text_harmony")
    assert m.text == "summarise this for @Tom"
    assert m.attachments == (Attachment(kind="picture", download_code="mIofexampleHarm0ny=="),)


def test_picture() -> None:
    m = convert_sample("picture")
    assert (m.text, m.msgtype, m.unsupported) == ("", "picture", False)
    assert m.attachments == (Attachment(kind="picture", download_code="mIofexampleJE0E"),)


def test_a_picture_with_only_a_picture_download_code_is_downloaded_by_it() -> None:
    """``pictureDownloadCode`` can come instead of ``downloadCode`` (a picture, a richText picture)."""
    data = load_data("picture")
    data["content"] = {"pictureDownloadCode": "pWjAonly=="}
    assert to_message(data).attachments == (Attachment(kind="picture", download_code="pWjAonly=="),)
    rich = load_data("rich_text")
    rich["content"]["richText"][1] = {"pictureDownloadCode": "pWjArich==", "type": "picture"}
    m = to_message(rich)
    assert m.attachments == (Attachment(kind="picture", download_code="pWjArich=="),)
    assert [(p.kind, p.download_code) for p in m.parts][1] == ("picture", "pWjArich==")


def test_audio_uses_dingtalk_recognition_as_text() -> None:
    m = convert_sample("audio")
    assert m.text == "钉钉PaaS开放中心，致力为企业……"
    assert m.attachments == (
        Attachment(kind="audio", download_code="mIofexample7g==", extra=(("duration", "4"),)),
    )


def test_video() -> None:
    m = convert_sample("video")
    assert m.text == ""
    assert m.attachments == (
        Attachment(
            kind="video", download_code="mIofexampleSaqP", extra=(("duration", "5"), ("videoType", "mp4"))
        ),
    )


def test_file() -> None:
    m = convert_sample("file")
    (att,) = m.attachments
    assert (att.kind, att.download_code, att.file_name) == ("file", "LJYYexamplebw==", "foobar.zip")
    assert dict(att.extra) == {"fileId": "117000848", "spaceId": "223000573"}
    assert "[file: foobar.zip]" in m.agent_text()


def test_quoted_text() -> None:
    m = convert_sample("quoted_text")
    assert m.text == "这个怎么解决？"
    assert m.quote == Quote(text="部署失败，报错 502", sender_name="李四", msgtype="text")
    assert "> 部署失败，报错 502" in m.agent_text()


def test_quoted_picture_and_file_are_described_and_kept_for_download() -> None:
    picture = convert_sample("quoted_picture").quote
    assert picture is not None
    assert (picture.text, picture.sender_name, picture.msgtype) == ("[picture]", "张三", "picture")
    assert [(a.kind, a.download_code) for a in picture.attachments] == [("picture", "mIofexampleQuotedPic=")]
    file = convert_sample("quoted_file").quote
    assert file is not None
    assert (file.text, file.msgtype) == ("[file: Q3 report.pdf]", "file")
    assert [(a.kind, a.file_name) for a in file.attachments] == [("file", "Q3 report.pdf")]


def test_quoted_card_and_opaque_text_are_unavailable() -> None:
    card = convert_sample("quoted_card")
    assert card.quote == Quote(text=QUOTE_UNAVAILABLE, sender_name="EdgeCrab", msgtype="interactiveCard")
    assert card.text == "explain this"
    opaque = convert_sample("quoted_opaque")
    assert opaque.quote is not None and opaque.quote.text == QUOTE_UNAVAILABLE


def test_rich_text_quote_under_content() -> None:
    m = convert_sample("rich_text_quote")
    assert m.text == "same error here:"
    assert m.attachments == (Attachment(kind="picture", download_code="mIofexampleRTQ=="),)
    assert m.quote == Quote(text="build log attached\n[picture]", sender_name="王五", msgtype="richText")


def test_unknown_msgtype_is_unsupported_and_keeps_its_type() -> None:
    m = convert_sample("unknown_msgtype")
    assert (m.msgtype, m.unsupported, m.text, m.attachments) == ("unknownMsgType", True, "", ())


def test_outsider_dm_has_no_staff_id() -> None:
    m = convert_sample("outsider_dm")
    assert m.sender.id == ""
    assert m.sender.key == "$:LWCP_v1:$Outsider9Jt3kQ=="
    assert m.sender.corp_id != m.bot_corp_id
    assert m.route is not None and m.route.sender_staff_id == ""


# --------------------------------------------------------------------------- issue 15: real payload shapes


def test_harmony_at_runs_without_spaces_keep_the_request() -> None:
    # @EdgeCrab/status: the old first-word rule removed the whole text, and the user got the greeting.
    m = convert_sample("group_rich_text_at_runs")
    assert m.text == "/status"
    both = convert_sample("group_rich_text_at_runs_request")
    assert both.text == "@Ann review Ann's merge request"  # only the robot's run went
    assert both.mentions == (Mention("$:LWCP_v1:$Ann7pQmember2==", "ann2203", name="Ann"),)


def test_quoted_rich_text_in_dingtalks_own_msgtype_content_keys() -> None:
    m = convert_sample("quoted_rich_text_msgtype_keys")
    assert m.quote == Quote(text="@傲小天\n[picture]\n测试11111", sender_name="傲小天", msgtype="richText")
    legacy = convert_sample("quoted_rich_text_mixed_keys")
    assert legacy.quote is not None and legacy.quote.text == "你好\n[picture]\n@Tom"


def test_quoted_chat_record_keeps_its_title_and_summary() -> None:
    m = convert_sample("quoted_chat_record")
    assert m.text == "重新学习一下"
    assert m.quote is not None and m.quote.msgtype == "chatRecord"
    assert m.quote.text.splitlines() == [
        "[chat record: 溯煜与祝欣莹的聊天记录]",
        "祝欣莹:[消息]",
        "溯煜:[分享]",
        "溯煜:[图片]",
        "溯煜:这个就是",
    ]
    assert QUOTE_UNAVAILABLE not in m.agent_text()
    records = convert_sample("quoted_chat_record_with_records").quote
    assert records is not None and records.text.endswith("祝欣莹: 原始正文\n溯煜: 这个就是")
    forwarded = convert_sample("chat_record")
    assert (forwarded.unsupported, forwarded.text.splitlines()[-2:]) == (
        False,
        ["祝欣莹: 第一条", "溯煜: 第二条"],
    )


def test_rich_text_pictures_stay_where_they_were() -> None:
    m = convert_sample("group_rich_text_pictures_between")
    assert m.parts == (
        Part("text", "这个问题示例图如下："),
        Part("picture", download_code="mIofexample7A=="),
        Part("text", "通过以上示意图可以明白完整的交互流程"),
        Part("picture", download_code="mIofexample8B=="),
        Part("text", "第二张图是结果"),
    )
    assert m.agent_text() == (
        "这个问题示例图如下：\n[picture]\n通过以上示意图可以明白完整的交互流程\n[picture]\n第二张图是结果"
    )
    # the download codes are still attachments, in order, for whoever fetches them
    assert [a.download_code for a in m.attachments] == ["mIofexample7A==", "mIofexample8B=="]
    # a hook that rewrites the text gets its text used, with the pictures listed before it
    assert m.replace(text="rewritten").agent_text() == "[picture: picture]\n\n[picture: picture]\n\nrewritten"


def test_other_people_mentioned_are_told_to_the_agent() -> None:
    m = convert_sample("group_text_other_mentions")
    assert m.mentions == (
        Mention("$:LWCP_v1:$Zq1xMemberTom0aB9==", "16650123698", name="Tom"),
        Mention("$:LWCP_v1:$Ann7pQmember2==", "ann2203", name="Ann"),
    )
    assert m.agent_text().splitlines()[0] == (
        "(also mentioned: @Tom (staffId 16650123698, dingtalkId $:LWCP_v1:$Zq1xMemberTom0aB9==); "
        "@Ann (staffId ann2203, dingtalkId $:LWCP_v1:$Ann7pQmember2==))"
    )
    # without a name in the text, the ids alone
    plain = convert_sample("group_text_at")
    assert (
        "(also mentioned: staffId 16650123698, dingtalkId $:LWCP_v1:$Zq1xMemberTom0aB9==)"
        in plain.agent_text()
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("group_interactive_card_title_link", "[shared card: 项目看板]\nhttps://dingtalk.com/doc/kanban"),
        (
            "interactive_card_file",
            "[shared card: report.pdf]\ndingtalk://dingtalkclient/page/yunpan?route=previewDentry"
            "&spaceId=space_attach_concat&fileId=file_attach_concat&type=file",
        ),
    ],
)
def test_shared_document_card_passes_its_title_and_link(name: str, expected: str) -> None:
    m = convert_sample(name)
    assert (m.msgtype, m.unsupported, m.text) == ("interactiveCard", False, expected)
    assert convert_sample("interactive_card_bare").unsupported is True


@pytest.mark.parametrize("name", ROBOT_SAMPLES)
def test_sample_snapshot(name: str, snapshot: Any) -> None:
    assert dataclasses.asdict(convert_sample(name)) == snapshot


# --------------------------------------------------------------------------- payload rules


def base(**changes: Any) -> dict[str, Any]:
    data = load_data("group_text_at")
    for key, value in changes.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_conversation_type_may_be_an_int() -> None:
    assert to_message(base(conversationType=2)).conversation.is_group is True
    assert to_message(base(conversationType=1, isInAtList=False)).conversation.is_group is False


def test_conversation_type_missing_falls_back_to_the_title() -> None:
    assert to_message(base(conversationType=...)).conversation.is_group is True
    assert to_message(base(conversationType=..., conversationTitle=...)).conversation.is_group is False


def test_robot_code_fallback() -> None:
    assert to_message(base(robotCode=...), robot_code_fallback="dingFallback").robot == "dingFallback"
    assert to_message(base(), robot_code_fallback="dingFallback").robot == ROBOT
    with pytest.raises(FrameError, match="missing robotCode"):
        to_message(base(robotCode=...))


def test_robot_name_files_the_message_and_the_route_keeps_the_code() -> None:
    message = to_message(base(), robot_name="sales")
    assert message.robot == "sales"
    assert message.route is not None and message.route.robot_code == ROBOT


def test_dm_is_never_bot_mentioned() -> None:
    data = load_data("dm_text") | {"isInAtList": True, "text": {"content": "@someone hi"}}
    m = to_message(data)
    assert m.bot_mentioned is False
    assert m.text == "@someone hi"  # DMs are never mention-stripped


BOT_ONLY = [{"dingtalkId": BOT_UID}]


@pytest.mark.parametrize(
    ("content", "mentioned", "expected"),
    [
        (" @EdgeCrab /retry now", True, "/retry now"),
        ("@EdgeCrab", True, ""),
        ("@EdgeCrab\n\nline two", True, "line two"),
        ("@EdgeCrab/retry now", True, "/retry now"),  # glued: only the name goes, never the request
        ("  hello @EdgeCrab", True, "hello @EdgeCrab"),  # only a leading run
        ("@Tom look", False, "@Tom look"),  # not mentioned: left alone
        ("email a@b.c", True, "email a@b.c"),
        ("@/retry", True, "@/retry"),  # no name: not a run
    ],
)
def test_leading_mention_rule_when_only_the_robot_is_mentioned(
    content: str, mentioned: bool, expected: str
) -> None:
    m = to_message(base(text={"content": content}, isInAtList=mentioned, atUsers=BOT_ONLY))
    assert m.text == expected


@pytest.mark.parametrize(
    ("content", "expected", "name"),
    [
        (" @Tom /retry now", "@Tom /retry now", "Tom"),  # Tom's run: kept, and Tom is named
        ("@Tom", "@Tom", "Tom"),
        ("please ask @汤姆 about it", "please ask @汤姆 about it", "汤姆"),
        ("@Tom @Ann hi", "@Tom @Ann hi", ""),  # two runs, one other person: no pairing
    ],
)
def test_another_persons_leading_mention_is_never_removed(content: str, expected: str, name: str) -> None:
    # group_text_at mentions the robot (removed by DingTalk) and Tom
    m = to_message(base(text={"content": content}))
    assert m.text == expected
    assert [mention.name for mention in m.mentions] == [name]


def test_mentions_without_chatbot_user_id_drop_entries_without_staff_id() -> None:
    at_users = [{"dingtalkId": "$:bot"}, {"dingtalkId": "$:tom", "staffId": "tom1"}]
    m = to_message(base(chatbotUserId=..., atUsers=at_users))
    assert m.mentions == (Mention(dingtalk_id="$:tom", staff_id="tom1"),)


def test_mentioned_outsider_is_kept_when_the_bot_id_is_known() -> None:
    at_users = [{"dingtalkId": BOT_UID}, {"dingtalkId": "$:outsider"}]
    assert to_message(base(atUsers=at_users)).mentions == (Mention(dingtalk_id="$:outsider"),)


def test_rich_text_at_items() -> None:
    items = [
        {"type": "at", "atName": "EdgeCrab", "atUserId": BOT_UID},
        {"type": "text", "text": "ping"},
        {"type": "at", "atName": "Tom", "atUserId": "tom1"},
        {"type": "text", "text": "and"},
        {"type": "at", "atName": "Ann", "atUserId": "ann1"},
        {"type": "emoji", "text": "[smile]"},
    ]
    m = to_message(base(msgtype="richText", text=..., content={"richText": items}))
    assert m.text == "ping @Tom and @Ann"


def test_media_without_download_code_is_unsupported_not_empty() -> None:
    m = to_message(base(msgtype="picture", text=..., content={}))
    assert (m.attachments, m.unsupported) == ((), True)
    audio = to_message(base(msgtype="audio", text=..., content={"recognition": "你好"}))
    assert (audio.text, audio.unsupported) == ("你好", False)


def test_other_msgtypes_are_unsupported() -> None:
    m = to_message(base(msgtype="interactiveCard", text=..., content="opaque"))
    assert (m.msgtype, m.unsupported) == ("interactiveCard", True)


@pytest.mark.parametrize(
    ("text_obj", "expected"),
    [
        ({"content": "x", "isReplyMsg": False, "repliedMsg": {"content": {"text": "old"}}}, None),
        ({"content": "x", "repliedMsg": {"content": {"text": "old"}}}, None),  # only isReplyMsg marks a quote
        ({"content": "x", "isReplyMsg": True}, Quote(text=QUOTE_UNAVAILABLE, msgtype="unknown")),
        (
            {"content": "x", "isReplyMsg": True, "repliedMsg": []},
            Quote(text=QUOTE_UNAVAILABLE, msgtype="unknown"),
        ),
        (
            {
                "content": "x",
                "isReplyMsg": True,
                "repliedMsg": {"msgType": "audio", "content": {"recognition": "嗨"}},
            },
            Quote(text="[audio: 嗨]", msgtype="audio"),
        ),
        (
            {
                "content": "x",
                "isReplyMsg": True,
                "repliedMsg": {"msgType": "video", "content": {"downloadCode": "c"}},
            },
            Quote(text="[video]", msgtype="video"),
        ),
        (
            {
                "content": "x",
                "isReplyMsg": True,
                "repliedMsg": {"msgType": "richText", "content": {"richText": 5}},
            },
            Quote(text=QUOTE_UNAVAILABLE, msgtype="richText"),
        ),
        (
            {"content": "x", "isReplyMsg": True, "repliedMsg": {"senderNick": 7, "content": {"text": "hi"}}},
            Quote(text="hi", msgtype="text"),
        ),
    ],
)
def test_quote_variants(text_obj: dict[str, Any], expected: Quote | None) -> None:
    assert to_message(base(text=text_obj)).quote == expected


def test_numbers_and_flags_are_tolerated_in_their_usual_spellings() -> None:
    m = to_message(base(createAt="1769851697611", isAdmin=1, isInAtList="true", senderStaffId=12345))
    assert m.created_at == pytest.approx(1769851697.611)
    assert (m.sender.is_admin, m.bot_mentioned, m.sender.id) == (True, True, "12345")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"createAt": 10**400}, "createAt is not a number"),
        ({"createAt": "1e400"}, "createAt is not a number"),
        ({"createAt": True}, "createAt is not a number"),
        ({"sessionWebhookExpiredTime": [1]}, "sessionWebhookExpiredTime is not a number"),
        ({"msgId": 10**5000}, "msgId is not a string"),
        ({"msgId": ""}, "missing msgId"),
        ({"senderNick": {"zh": "李四"}}, "senderNick is not a string"),
        ({"isAdmin": "maybe"}, "isAdmin is not a boolean"),
        ({"atUsers": ["$:x"]}, "atUsers[0] is not an object"),
        ({"text": {"content": ["a"]}}, "text.content is not a string"),
        ({"msgtype": "richText", "content": {"richText": ["a"]}}, "content.richText[0] is not an object"),
        (
            {"msgtype": "richText", "content": {"richText": [{"text": 1.5j}]}},
            "content.richText[0].text is not",
        ),
        (
            {"msgtype": "file", "content": {"downloadCode": "c", "fileName": []}},
            "content.fileName is not a string",
        ),
        ({"msgtype": "video"}, "video message has no content"),
    ],
)
def test_wrong_types_are_frame_errors(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        to_message(base(**changes))
    assert caught.value.reason.startswith(reason)


def test_to_message_rejects_non_objects() -> None:
    with pytest.raises(FrameError, match="data is not an object"):
        to_message(["not", "a", "dict"])  # type: ignore[arg-type]


def test_huge_and_odd_strings_survive() -> None:
    big = "界" * 1_000_000
    odd = "\u202e\ud800\x00\U0001f980 crab"
    m = to_message(base(text={"content": big + odd}, senderNick=odd))
    assert m.text.endswith("crab") and len(m.text) > 1_000_000
    assert m.sender.name == odd.replace("\ud800", "\ufffd")  # lone surrogates cannot be stored or sent
    raw = json.dumps({"type": "CALLBACK", "headers": {"messageId": odd}, "data": json.dumps(base())})
    assert parse_frame(raw).message_id == odd


@pytest.mark.parametrize("escape", ["\\ud800", "\\uDBFF", "\\udc00", "\\uDFFF"])
def test_decode_payload_replaces_lone_surrogates_escaped_in_the_json(escape: str) -> None:
    text = json.dumps(base(senderNick="x")).replace('"senderNick": "x"', f'"senderNick": "a{escape}b"')
    data = decode_payload(text)
    assert data["senderNick"] == "a\ufffdb"
    assert to_message(data, scrubbed=True).sender.name == "a\ufffdb"


def test_decode_payload_keeps_text_without_surrogate_escapes_as_it_is() -> None:
    payload = base(senderNick="\u202e\U0001f980 crab \\ud800 is not an escape here")
    data = decode_payload(json.dumps(payload))
    assert data == payload  # a pair (the crab) and an escaped backslash are no lone surrogates
    data = decode_payload(json.dumps(payload, ensure_ascii=False))
    assert data == payload


@pytest.mark.parametrize("text, reason", [("[1]", "data is not an object"), ("{", "data is not JSON")])
def test_decode_payload_refuses_what_is_not_a_json_object(text: str, reason: str) -> None:
    with pytest.raises(FrameError) as caught:
        decode_payload(text)
    assert caught.value.reason.startswith(reason)


# --------------------------------------------------------------------------- fuzzing

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)
KEYS = [
    "msgId", "conversationId", "conversationType", "conversationTitle", "senderId", "senderStaffId",
    "senderNick", "senderCorpId", "isAdmin", "isInAtList", "atUsers", "chatbotUserId", "chatbotCorpId",
    "robotCode", "msgtype", "text", "content", "createAt", "sessionWebhook", "sessionWebhookExpiredTime",
]  # fmt: skip
payload_dicts = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), json_values, max_size=len(KEYS))
MSGTYPES = ["text", "richText", "picture", "audio", "video", "file", "unknownMsgType", "interactiveCard"]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def must_be_message_or_frame_error(data: Any, **kwargs: Any) -> None:
    try:
        result = to_message(data, **kwargs)
    except FrameError as exc:
        assert exc.reason
    else:
        assert isinstance(result, Message)
        hash(result)  # frozen all the way down: nothing mutable slipped in


@FUZZ
@given(payload_dicts, st.sampled_from(MSGTYPES))
def test_fuzz_arbitrary_payloads(data: dict[str, Any], msgtype: str) -> None:
    must_be_message_or_frame_error(data)
    # Also with the required fields present, so the type-specific code is reached.
    filled = {
        "msgId": "m",
        "conversationId": "c",
        "senderId": "s",
        "robotCode": "r",
        "msgtype": msgtype,
    } | data
    must_be_message_or_frame_error(filled, robot_code_fallback="fallback")


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key/index path inside a decoded payload."""
    found: list[tuple[Any, ...]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


odd_values = (
    json_values
    | st.tuples(st.text(min_size=1, max_size=3), st.integers(1_000, 50_000)).map(lambda t: t[0] * t[1])
    | st.sampled_from(["", " ", "@", "@@ @", "\u202e\u0000", "\ud800", "2", "1", "NaN", "1e999", "-0"])
    | st.integers(min_value=-(10**30), max_value=10**30)
)


@FUZZ
@given(st.sampled_from(ROBOT_SAMPLES), st.data())
def test_fuzz_mutated_samples(name: str, draw: st.DataObject) -> None:
    data = copy.deepcopy(load_data(name))
    for _ in range(draw.draw(st.integers(1, 3))):
        where = draw.draw(st.sampled_from(paths(data)))
        parent: Any = data
        for key in where[:-1]:
            parent = parent[key]
        if draw.draw(st.booleans()) and isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw.draw(odd_values)
        if not paths(data):
            break
    must_be_message_or_frame_error(data)


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200))
def test_fuzz_parse_frame_raw(raw: str | bytes) -> None:
    try:
        frame = parse_frame(raw)
    except FrameError:
        return
    assert isinstance(frame, Frame)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["type", "headers", "data", "specVersion"]) | st.text(max_size=5), json_values
    ),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    payload_dicts,
)
def test_fuzz_full_pipeline(
    envelope: dict[str, Any], headers: dict[str, Any], payload: dict[str, Any]
) -> None:
    for candidate in (
        envelope,
        envelope | {"type": "CALLBACK", "headers": headers, "data": json.dumps(payload)},
    ):
        try:
            frame = parse_frame(json.dumps(candidate))
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in frame.headers.items())
            data = decode_data(frame)
            to_message(data, stream_message_id=frame.message_id or "")
        except FrameError as exc:
            assert exc.reason
