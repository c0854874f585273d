"""The fake DingTalk's REST side over loopback: message payloads, tokens, sessionWebhook, OpenAPI sends,
media and fault injection, checked against the protocol reference with a plain httpx client.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from edgecrab.testing.fakedingtalk import (
    DEFAULT_APP_KEY,
    DEFAULT_APP_SECRET,
    DEFAULT_GROUP_ID,
    DROP,
    FakeApp,
    FakeDingTalk,
)
from tests.component.fakeclient import OPEN, SUBS, TOKEN, token

pytestmark = pytest.mark.anyio


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(seed=7) as f:
        yield f


@pytest.fixture
async def http(fake: FakeDingTalk) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url, timeout=5) as client:
        yield client


async def test_payload_builders_follow_the_reference(fake: FakeDingTalk) -> None:
    dm = fake.dm("manager807", "hi")
    assert dm["conversationType"] == "1" and dm["senderStaffId"] == "manager807" and dm["isAdmin"] is True
    assert dm["sessionWebhookExpiredTime"] - dm["createAt"] == 5_400_000
    assert dm["sessionWebhook"].startswith(fake.base_url + "/robot/sendBySession?session=")
    assert dm["msgId"] != fake.dm("manager807", "hi")["msgId"]
    assert dm["conversationId"] == fake.dm_conversation_id("manager807")
    app = fake.app()
    group = fake.group("user1001", "测试数据", at_users=["user1002"])
    assert group["conversationType"] == "2" and group["text"]["content"] == " 测试数据"
    assert group["isInAtList"] is True and group["conversationId"] == DEFAULT_GROUP_ID
    assert group["atUsers"][0] == {"dingtalkId": app.chatbot_user_id}
    assert group["atUsers"][1]["staffId"] == "user1002" and group["chatbotUserId"] == app.chatbot_user_id
    outsider = next(u for u in fake.users if not u.staff_id)
    assert "senderStaffId" not in fake.dm(outsider, "hello")
    assert fake.dm(outsider, "x")["senderCorpId"] != fake.dm(outsider, "x")["chatbotCorpId"]
    assert fake.bare_at("user1001")["text"]["content"].strip() == ""
    rich = fake.rich_text("user1001", ["look:", b"\x89PNG..."])["content"]["richText"]
    assert rich[0] == {"text": "look:"} and rich[1]["type"] == "picture" and rich[1]["downloadCode"]
    assert set(fake.picture("user1001")["content"]) == {"pictureDownloadCode", "downloadCode"}
    assert fake.audio("user1001", recognition="你好")["content"]["recognition"] == "你好"
    video = fake.video("user1001")["content"]
    assert video["duration"] == "5" and video["videoType"] == "mp4"
    assert set(fake.file("user1001", "a.pdf")["content"]) == {"spaceId", "fileName", "downloadCode", "fileId"}
    assert fake.unknown("user1001")["msgtype"] == "unknownMsgType"
    quoted = fake.quoted("user1001", "这个怎么解决？", quoted_text="部署失败")
    assert quoted["text"]["isReplyMsg"] is True
    assert quoted["text"]["repliedMsg"]["content"] == {"text": "部署失败"}
    assert "createdAt" in quoted["text"]["repliedMsg"]
    assert fake.quoted("user1001", "q", variant="content")["content"]["isReplyMsg"] is True
    assert "senderNick" not in fake.dm("user1001", "x", senderNick=DROP)


# tokens, webhooks, OpenAPI sends ----------------------------------------------------------------------
async def test_tokens_expire_and_belong_to_one_app(http: httpx.AsyncClient) -> None:
    async with FakeDingTalk(
        apps=[FakeApp("key_a", "sec_a"), FakeApp("key_b", "sec_b")], token_ttl_s=60
    ) as fk:
        async with httpx.AsyncClient(base_url=fk.base_url) as client:
            tok_a = await token(client, "key_a", "sec_a")
            assert tok_a == await token(client, "key_a", "sec_a")  # same token while valid
            bad = await client.post("/v1.0/oauth2/accessToken", json={"appKey": "key_a", "appSecret": "x"})
            assert bad.status_code == 400
            legacy = await client.get("/gettoken", params={"appkey": "key_b", "appsecret": "sec_b"})
            assert legacy.json()["errcode"] == 0 and legacy.json()["expires_in"] == 60
            send = {
                "robotCode": "key_b",
                "userIds": ["manager807"],
                "msgKey": "sampleText",
                "msgParam": json.dumps({"content": "hi"}),
            }
            other = await client.post("/v1.0/robot/oToMessages/batchSend", json=send, headers={TOKEN: tok_a})
            assert other.status_code == 400 and other.json()["code"] == "InvalidAuthentication"
            missing = await client.post("/v1.0/robot/oToMessages/batchSend", json=send)
            assert (
                missing.json()
                == {**missing.json(), "code": "InvalidAuthentication", "message": "不合法的access_token"}
                and missing.json()["requestid"]
            )
            tok_b = legacy.json()["access_token"]
            ok = await client.post("/v1.0/robot/oToMessages/batchSend", json=send, headers={TOKEN: tok_b})
            assert ok.status_code == 200
            fk.advance_clock(61)
            expired = await client.post(
                "/v1.0/robot/oToMessages/batchSend", json=send, headers={TOKEN: tok_b}
            )
            assert expired.status_code == 400 and expired.json()["code"] == "InvalidAuthentication"
            assert await token(client, "key_b", "sec_b") != tok_b
            fresh = await token(client, "key_a", "sec_a")
            assert fk.expire_tokens_now("key_a") == 1
            assert (
                await client.post("/v1.0/robot/messageFiles/download", json={}, headers={TOKEN: fresh})
            ).status_code == 400


async def test_webhook_send_expiry_and_body_limit(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    data = fake.group("user1001", "hi")
    url = data["sessionWebhook"]
    body = {
        "msgtype": "markdown",
        "markdown": {"title": "Reply", "text": "**bold**"},
        "at": {"atUserIds": ["user1001"], "isAtAll": False},
    }
    assert (await http.post(url, json=body)).json() == {"errcode": 0, "errmsg": "ok"}
    record = fake.messages_for(DEFAULT_GROUP_ID)[-1]
    assert (record.via, record.msgtype, record.title, record.text) == (
        "webhook",
        "markdown",
        "Reply",
        "**bold**",
    )
    assert record.at_user_ids == ["user1001"] and record.app == DEFAULT_APP_KEY
    big = {"msgtype": "text", "text": {"content": "x" * 20_001}}
    assert (await http.post(url, json=big)).json() == {
        "errcode": 460101,
        "errmsg": "message too long, exceed 20000 bytes",
    }
    for broken in (
        {"msgtype": "markdown", "markdown": {"text": "no title"}},
        {"msgtype": "text", "text": {}},
        {"msgtype": "text", "text": {"content": "x"}, "at": {"atUserIds": "user1001"}},
    ):
        assert (await http.post(url, json=broken)).json()["errcode"] != 0
    assert fake.expire_webhooks_now(conversation_id=DEFAULT_GROUP_ID) >= 1
    gone = await http.post(url, json={"msgtype": "text", "text": {"content": "late"}})
    assert gone.status_code == 200 and gone.json() == {"errcode": 300001, "errmsg": "session 不存在"}
    early = fake.dm("user1001", "x")
    fake.faults.webhook_dies_after_s = 0.0
    assert await http.post(early["sessionWebhook"], json=big)
    assert (await http.post(early["sessionWebhook"], json=body)).json()["errcode"] == 300001
    fake.faults.webhook_dies_after_s = None
    fake.webhook_ttl_s = 1
    short = fake.dm("user1001", "x")
    assert short["sessionWebhookExpiredTime"] - short["createAt"] == 1000
    fake.advance_clock(2)
    assert (await http.post(short["sessionWebhook"], json=body)).json()["errcode"] == 300001
    assert len(fake.outbound) == 1


async def test_batch_send_validation(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    headers = {TOKEN: await token(http)}
    url = "/v1.0/robot/oToMessages/batchSend"
    base = {
        "robotCode": DEFAULT_APP_KEY,
        "userIds": ["manager807"],
        "msgKey": "sampleMarkdown",
        "msgParam": json.dumps({"title": "T", "text": "**hi**"}),
    }
    for field in base:
        response = await http.post(url, json={k: v for k, v in base.items() if k != field}, headers=headers)
        assert response.status_code == 400, field
    as_object = await http.post(url, json={**base, "msgParam": {"title": "T", "text": "x"}}, headers=headers)
    assert as_object.status_code == 400
    wrong_keys = await http.post(
        url, json={**base, "msgParam": json.dumps({"content": "x"})}, headers=headers
    )
    assert wrong_keys.status_code == 400
    fake.faults.flow_control = {"user1001"}
    cid = fake.dm_conversation_id("user1002")
    mixed = await http.post(
        url, json={**base, "userIds": ["manager807", cid, "user1001", "user1002"]}, headers=headers
    )
    assert mixed.status_code == 200
    assert mixed.json()["invalidStaffIdList"] == [cid]
    assert mixed.json()["flowControlledStaffIdList"] == ["user1001"] and mixed.json()["processQueryKey"]
    assert [r.user_ids for r in fake.outbound] == [["manager807"], ["user1002"]]
    assert fake.messages_for(cid)[0].via == "batchSend" and fake.messages_for(cid)[0].title == "T"
    group = {
        "robotCode": DEFAULT_APP_KEY,
        "openConversationId": DEFAULT_GROUP_ID,
        "msgKey": "sampleText",
        "msgParam": json.dumps({"content": "to the group"}),
    }
    unknown_group = await http.post("/v1.0/robot/groupMessages/send", json=group, headers=headers)
    assert unknown_group.status_code == 400
    fake.group("user1001", "hello")  # the robot is now known in the group
    sent = await http.post("/v1.0/robot/groupMessages/send", json=group, headers=headers)
    assert set(sent.json()) == {"processQueryKey"}
    assert fake.messages_for(DEFAULT_GROUP_ID)[-1].text == "to the group"


async def test_media_download_only_for_the_receiving_app(http: httpx.AsyncClient) -> None:
    async with FakeDingTalk(apps=[FakeApp("key_a", "sec_a"), FakeApp("key_b", "sec_b")]) as fk:
        async with httpx.AsyncClient(base_url=fk.base_url) as client:
            code = fk.picture("user1001", content=b"PNGDATA", app="key_a")["content"]["downloadCode"]
            tok_a, tok_b = await token(client, "key_a", "sec_a"), await token(client, "key_b", "sec_b")
            got = await client.post(
                "/v1.0/robot/messageFiles/download",
                headers={TOKEN: tok_a},
                json={"robotCode": "key_a", "downloadCode": code},
            )
            url = got.json()["downloadUrl"]
            assert url.startswith(fk.base_url) and (await client.get(url)).content == b"PNGDATA"
            other = await client.post(
                "/v1.0/robot/messageFiles/download",
                headers={TOKEN: tok_b},
                json={"robotCode": "key_b", "downloadCode": code},
            )
            assert other.status_code == 400
            upload = await client.post(
                "/media/upload",
                params={"access_token": tok_a, "type": "image"},
                files={"media": ("a.png", b"\x89PNG\r\n\x1a\nIMG", "image/png")},
            )
            assert upload.json()["errcode"] == 0 and upload.json()["media_id"].startswith("@")


async def test_download_urls_are_signed_expire_and_refuse_a_content_type(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    """Like DingTalk's pre-signed OSS URLs: the signature covers the headers (a ``Content-Type`` breaks it),
    the query, and the time; each refusal is an OSS XML error, and nothing leaks the file."""
    code = fake.file("user1001", "a.txt", content=b"hello")["content"]["downloadCode"]
    headers = {TOKEN: await token(http)}
    body = {"robotCode": DEFAULT_APP_KEY, "downloadCode": code}
    exchanged = await http.post("/v1.0/robot/messageFiles/download", headers=headers, json=body)
    url = exchanged.json()["downloadUrl"]
    assert "Expires=" in url and "Signature=" in url
    typed = await http.get(url, headers={"Content-Type": "application/octet-stream"})
    assert typed.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in typed.content
    forged = await http.get(url.replace("Signature=", "Signature=x"))
    assert forged.status_code == 403 and b"hello" not in forged.content
    unknown = await http.get(url.replace("/files/", "/files/x"))
    assert unknown.status_code == 404 and b"<Code>NoSuchKey</Code>" in unknown.content
    plain = await http.get(url)
    assert plain.status_code == 200 and plain.content == b"hello"
    assert "attachment" in plain.headers["content-disposition"]
    fake.advance_clock(fake.settings.download_ttl_s + 1)
    late = await http.get(url)
    assert late.status_code == 403 and b"Request has expired" in late.content
    assert fake.state.counters["files_refused"] == 3 and fake.state.counters["files_served"] == 1
    bad = await http.post(
        "/v1.0/robot/messageFiles/download", headers=headers, json={**body, "downloadCode": "nope"}
    )
    assert bad.status_code == 400 and "downloadCode" in bad.json()["message"]


async def test_fault_injection(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    fake.faults.fail("/v1.0/oauth2/accessToken", 503, times=2)
    statuses = [
        (
            await http.post(
                "/v1.0/oauth2/accessToken", json={"appKey": DEFAULT_APP_KEY, "appSecret": DEFAULT_APP_SECRET}
            )
        ).status_code
        for _ in range(3)
    ]
    assert statuses == [503, 503, 200]
    headers = {TOKEN: await token(http)}
    send = {
        "robotCode": DEFAULT_APP_KEY,
        "userIds": ["manager807"],
        "msgKey": "sampleText",
        "msgParam": json.dumps({"content": "hi"}),
    }
    fake.faults.fail("/v1.0/robot/*", 403)
    qps = await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)
    assert qps.status_code == 403 and qps.json()["code"] == "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
    fake.faults.fail("/v1.0/robot/*", rate=1.0, times=4, kinds=["504", "429"])
    seen = {
        (await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)).status_code
        for _ in range(4)
    }
    assert seen <= {504, 429} and seen
    fake.faults.delay("/v1.0/robot/*", 0.5, times=1)
    with pytest.raises(httpx.ReadTimeout):
        await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers, timeout=0.1)
    fake.faults.qps_limit = 2
    codes = [
        (await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)).status_code
        for _ in range(3)
    ]
    assert codes == [200, 200, 403]
    fake.faults.clear()
    fake.faults.api_count_limit = 1
    assert (
        await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)
    ).status_code == 200
    quota = await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)
    assert quota.json()["code"] == "Forbidden.AccessDenied.ApiCountLimitForOrg"
    assert (
        await http.post(
            "/v1.0/oauth2/accessToken", json={"appKey": DEFAULT_APP_KEY, "appSecret": DEFAULT_APP_SECRET}
        )
    ).status_code == 200
    fake.faults.reject_credentials = True
    refused = await http.post(
        OPEN, json={"clientId": DEFAULT_APP_KEY, "clientSecret": DEFAULT_APP_SECRET, "subscriptions": SUBS}
    )
    assert refused.status_code == 401
    fake.faults.fail("/v1.0/robot/*", kinds=["reset"])
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/v1.0/robot/oToMessages/batchSend", json=send, headers=headers)
    fake.faults.clear()
    fake.faults.webhook_per_minute = 1
    hook = fake.dm("user1001", "x")["sessionWebhook"]
    text = {"msgtype": "text", "text": {"content": "hi"}}
    assert [(await http.post(hook, json=text)).json()["errcode"] for _ in range(2)] == [0, 130101]
    faulted = [r.fault for r in fake.requests if r.fault]
    assert "reset" in faulted and "qps_limit" in faulted and "api_count_limit" in faulted
    assert all(r.t <= s.t for r, s in zip(fake.requests, fake.requests[1:], strict=False))


async def test_unknown_routes_answer_like_dingtalk_and_are_recorded(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    assert fake.stats()["unknown_routes"] == 0
    new_api = await http.post("/v1.0/robot/noSuchApi", json={"robotCode": DEFAULT_APP_KEY})
    assert new_api.status_code == 404
    assert new_api.headers["content-type"] == "application/json;charset=utf-8"
    body = new_api.json()
    assert set(body) == {"code", "message", "requestid"} and body["code"] == "InvalidAction.NotFound"
    assert new_api.headers["x-acs-request-id"] == body["requestid"]
    wrong_method = await http.get("/v1.0/robot/oToMessages/batchSend")  # a known path, the wrong method
    assert wrong_method.status_code == 404 and wrong_method.json()["code"] == "InvalidAction.NotFound"
    legacy = await http.post("/topapi/message/corpconversation/asyncsend_v2", json={})
    assert legacy.status_code == 200 and legacy.json() == {"errcode": 404, "errmsg": "请求的URI地址不存在"}
    known = await http.post("/v1.0/oauth2/accessToken", json={"appKey": "x", "appSecret": "y"})
    assert known.status_code == 400  # a served route keeps its own errors and is not "unknown"

    assert [(r.method, r.path, r.status) for r in fake.unknown_routes] == [
        ("POST", "/v1.0/robot/noSuchApi", 404),
        ("GET", "/v1.0/robot/oToMessages/batchSend", 404),
        ("POST", "/topapi/message/corpconversation/asyncsend_v2", 200),
    ]
    assert fake.unknown_routes[0].body == {"robotCode": DEFAULT_APP_KEY}
    assert all(r in fake.requests for r in fake.unknown_routes) and len(fake.requests) == 4
    assert fake.stats()["unknown_routes"] == 3
    listed = (await http.get("/_fake/unknown_routes", params={"since": 2})).json()["unknown_routes"]
    assert [r["path"] for r in listed] == ["/topapi/message/corpconversation/asyncsend_v2"]
    # A typo in a control call is the control API's own error, not a DingTalk call.
    typo = await http.get("/_fake/unknown_route")
    assert typo.status_code == 404 and "GET /_fake/ lists them" in typo.json()["error"]
    fake.reset_records()
    assert fake.unknown_routes == [] and fake.stats()["unknown_routes"] == 0
