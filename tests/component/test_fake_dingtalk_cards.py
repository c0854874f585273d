"""The fake DingTalk's card APIs over real sockets, with raw HTTP: the rules a card client must follow.

These pin the fake itself (what DingTalk accepts and refuses); ``test_cards.py`` runs the gateway's card
client against it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk
from edgecrab.testing.fakedingtalk.cards import PUBLIC_AI_TEMPLATE
from edgecrab.testing.fakedingtalk.models import CARD_CALLBACK_TOPIC
from tests.component.fakeclient import TOKEN, ack, connect, recv, token

pytestmark = pytest.mark.anyio

GROUP = "cidCardGroup0000000000000000000000000000000="
CREATE = "/v1.0/card/instances"
DELIVER = "/v1.0/card/instances/deliver"
BOTH = "/v1.0/card/instances/createAndDeliver"
STREAM = "/v1.0/card/streaming"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDingTalk]:
    async with FakeDingTalk(seed=3) as f:
        f.add_group(GROUP, "卡片群")
        yield f


@pytest.fixture
async def http(fake: FakeDingTalk) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=fake.base_url) as client:
        client.headers[TOKEN] = await token(client)
        yield client


def create_body(track: str, **extra: Any) -> dict[str, Any]:
    return {
        "cardTemplateId": PUBLIC_AI_TEMPLATE,
        "outTrackId": track,
        "cardData": {"cardParamMap": {"msgContent": "", "flowStatus": "2"}},
        "callbackType": "STREAM",
        "imGroupOpenSpaceModel": {"supportForward": True},
        "imRobotOpenSpaceModel": {"supportForward": True},
        **extra,
    }


def dm_deliver(track: str, staff: str = "user1001", robot: str = "ding_test_key") -> dict[str, Any]:
    return {
        "outTrackId": track,
        "userIdType": 1,
        "openSpaceId": f"dtv1.card//IM_ROBOT.{staff}",
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT", "robotCode": robot},
    }


def frame(track: str, content: str, *, guid: str | None = None, **flags: Any) -> dict[str, Any]:
    return {
        "outTrackId": track,
        "guid": guid or uuid.uuid4().hex,
        "key": "msgContent",
        "content": content,
        "isFull": True,
        **flags,
    }


async def test_create_deliver_stream_finish_is_what_the_user_sees(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    created = await http.post(CREATE, json=create_body("c1"))
    assert created.status_code == 200 and created.json() == {"success": True, "result": "c1"}
    delivered = await http.post(DELIVER, json=dm_deliver("c1"))
    [result] = delivered.json()["result"]
    assert result["success"] is True and result["spaceType"] == "IM_ROBOT"
    for text in ("Hel", "Hello wor"):
        assert (await http.put(STREAM, json=frame("c1", text))).status_code == 200
    card = fake.cards.card("c1")
    assert (card.text, card.status, card.visible) == ("Hello wor", "inputting", True)
    await http.put(STREAM, json=frame("c1", "Hello world", isFinalize=True))
    final = {"flowStatus": "3", "msgContent": "Hello world"}
    body = {
        "outTrackId": "c1",
        "cardData": {"cardParamMap": final},
        "cardUpdateOptions": {"updateCardDataByKey": True},
    }
    assert (await http.put(CREATE, json=body)).status_code == 200
    assert (card.text, card.status, card.stream_finalized) == ("Hello world", "finished", True)
    assert [f.content for f in card.frames] == ["Hel", "Hello wor", "Hello world"]
    assert card.conversation_ids == [fake.dm_conversation_id("user1001")]
    listed = (await http.get("/_fake/cards")).json()["cards"]
    assert [(c["out_track_id"], c["status"], c["text"]) for c in listed] == [
        ("c1", "finished", "Hello world")
    ]


async def test_create_and_deliver_to_a_group_answers_deliver_results(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    body = create_body(
        "g1",
        openSpaceId=f"dtv1.card//IM_GROUP.{GROUP}",
        userIdType=1,
        imGroupOpenDeliverModel={"robotCode": "ding_test_key"},
    )
    answer = (await http.post(BOTH, json=body)).json()
    assert answer["success"] is True
    assert answer["result"]["outTrackId"] == "g1" and answer["result"]["processQueryKey"]
    assert [r["success"] for r in answer["result"]["deliverResults"]] == [True]
    assert fake.cards.in_conversation(GROUP) == [fake.cards.card("g1")]


async def test_deliver_failures_come_inside_http_200(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    await http.post(CREATE, json=create_body("f1"))
    fake.cards.fail_deliveries(1, "user blocked the robot")
    answer = await http.post(DELIVER, json=dm_deliver("f1"))
    assert answer.status_code == 200
    assert answer.json()["result"][0] == {
        "carrierId": "",
        "errorMsg": "user blocked the robot",
        "spaceId": "user1001",
        "spaceType": "IM_ROBOT",
        "success": False,
    }
    assert not fake.cards.card("f1").visible
    missing_robot = dm_deliver("f1", robot="")
    assert (await http.post(DELIVER, json=missing_robot)).json()["result"][0][
        "errorMsg"
    ] == "robotCode is empty"
    unknown_group = {"outTrackId": "f1", "openSpaceId": "dtv1.card//IM_GROUP.cidNope=", "userIdType": 1}
    unknown_group["imGroupOpenDeliverModel"] = {"robotCode": "ding_test_key"}
    assert (await http.post(DELIVER, json=unknown_group)).json()["result"][0]["success"] is False


async def test_dm_deliver_needs_the_deliver_model_and_a_group_one_without_it_is_silently_dropped(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    await http.post(CREATE, json=create_body("m1"))
    space_model_only = {
        "outTrackId": "m1",
        "userIdType": 1,
        "openSpaceId": "dtv1.card//IM_ROBOT.user1001",
        "imRobotOpenSpaceModel": {"supportForward": True},
    }
    refused = await http.post(DELIVER, json=space_model_only)
    assert (refused.status_code, refused.json()["code"]) == (400, "param.spaceDeliverModelEmpty")
    bare = {"outTrackId": "m1", "userIdType": 1, "openSpaceId": f"dtv1.card//IM_GROUP.{GROUP}"}
    answer = await http.post(DELIVER, json=bare)
    assert answer.json()["result"][0]["success"] is True
    assert not fake.cards.card("m1").visible  # "success", and nobody sees it


@pytest.mark.parametrize(
    ("template", "status", "code"),
    [
        ("no-such-template.schema", 400, "param.templateNotExist"),
        ("unpublished.schema", 400, "param.templateUnpublished"),
    ],
)
async def test_unknown_and_unpublished_templates_are_refused(
    fake: FakeDingTalk, http: httpx.AsyncClient, template: str, status: int, code: str
) -> None:
    fake.cards.register_template("unpublished.schema", ("content",), published=False)
    answer = await http.post(CREATE, json={**create_body("t1"), "cardTemplateId": template})
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert fake.cards.cards == {}


async def test_rules_on_ids_params_and_keys(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    await http.post(CREATE, json=create_body("r1"))
    again = await http.post(CREATE, json=create_body("r1"))
    assert (again.status_code, again.json()["code"]) == (400, "param.outTrackIdExist")
    not_strings = create_body("r2", cardData={"cardParamMap": {"flowStatus": 2, "msgContent": ""}})
    refused = await http.post(CREATE, json=not_strings)
    assert refused.status_code == 400 and "flowStatus" in refused.json()["message"]
    guid = uuid.uuid4().hex
    assert (await http.put(STREAM, json=frame("r1", "a", guid=guid))).status_code == 200
    repeated = await http.put(STREAM, json=frame("r1", "ab", guid=guid))
    assert (repeated.status_code, repeated.json()["code"]) == (400, "param.guidDuplicated")
    wrong_key = {**frame("r1", "ab"), "key": "content"}
    answer = await http.put(STREAM, json=wrong_key)
    assert (answer.status_code, answer.json()["code"]) == (500, "unknownError")
    assert fake.cards.card("r1").text == "a"
    nobody = await http.put(STREAM, json=frame("nope", "x"))
    assert nobody.status_code == 400


async def test_update_without_by_key_wipes_the_variables_it_leaves_out(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    await http.post(CREATE, json=create_body("u1"))
    await http.put(CREATE, json={"outTrackId": "u1", "cardData": {"cardParamMap": {"flowStatus": "3"}}})
    assert fake.cards.card("u1").params == {"flowStatus": "3"}
    by_key = {"outTrackId": "u1", "cardData": {"cardParamMap": {"msgContent": "x"}}}
    await http.put(CREATE, json={**by_key, "cardUpdateOptions": {"updateCardDataByKey": True}})
    assert fake.cards.card("u1").params == {"flowStatus": "3", "msgContent": "x"}


async def test_token_permissions_and_qps(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    no_token = await http.post(CREATE, json=create_body("p0"), headers={TOKEN: "stale"})
    assert (no_token.status_code, no_token.json()["code"]) == (400, "InvalidAuthentication")
    await http.post(CREATE, json=create_body("p1"))
    fake.cards.revoke("Card.Streaming.Write")
    denied = await http.put(STREAM, json=frame("p1", "x"))
    assert denied.status_code == 403
    assert denied.json()["code"] == "Forbidden.AccessDenied.AccessTokenPermissionDenied"
    assert denied.json()["accessdenieddetail"] == {"requiredScopes": ["Card.Streaming.Write"]}
    fake.cards.grant()
    fake.cards.qps_limit = 2
    codes = [(await http.put(STREAM, json=frame("p1", f"t{i}"))).status_code for i in range(4)]
    assert codes.count(403) >= 1 and codes[:2] == [200, 200]
    assert fake.cards.throttled == codes.count(403)
    recorded = [r for r in fake.state.requests if r.path == STREAM]
    assert len(recorded) == 5  # every card call is recorded and published like any REST call


async def test_card_button_pushes_a_callback_on_the_card_topic(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    await http.post(CREATE, json=create_body("b1"))
    await http.post(DELIVER, json=dm_deliver("b1"))
    ws = await connect(fake, [{"type": "CALLBACK", "topic": CARD_CALLBACK_TOPIC}])
    try:
        pressed = await http.post("/_fake/cards/b1/callback", json={"action_ids": ["stop"]})
        assert pressed.status_code == 200
        pushed = await recv(ws)
        assert pushed["headers"]["topic"] == CARD_CALLBACK_TOPIC
        data = json.loads(pushed["data"])
        assert (data["outTrackId"], data["userId"], data["spaceType"]) == ("b1", "user1001", "IM_ROBOT")
        assert json.loads(data["content"])["cardPrivateData"]["actionIds"] == ["stop"]
        await ws.send(ack(pushed))
        await fake.wait_for_ack(pushed["headers"]["messageId"])
    finally:
        await ws.close()


async def test_settings_through_the_control_api(fake: FakeDingTalk, http: httpx.AsyncClient) -> None:
    spec = {"qps_limit": 5, "revoke": ["Card.Instance.Write"], "deliver_failures": 2}
    shown = (await http.post("/_fake/cards/settings", json=spec)).json()
    assert shown["qps_limit"] == 5 and shown["revoked"] == ["*:Card.Instance.Write"]
    assert shown["deliver_failures"] == 2
    denied = await http.post(CREATE, json=create_body("s1"))
    assert denied.json()["accessdenieddetail"]["requiredScopes"] == ["Card.Instance.Write"]
    shown = (await http.post("/_fake/cards/settings", json={"grant": "all", "qps_limit": None})).json()
    assert shown["revoked"] == [] and shown["qps_limit"] is None


async def test_a_lost_answer_leaves_the_card_made_and_a_retry_finds_its_id_taken(
    fake: FakeDingTalk, http: httpx.AsyncClient
) -> None:
    body = {**create_body("lost"), **dm_deliver("lost")}
    fake.faults.configure({"lose": [{"path": BOTH}]})  # the control API's spelling of lose_answer()
    with pytest.raises(httpx.RemoteProtocolError):  # done, and the connection dropped without an answer
        await http.post(BOTH, json=body)
    assert fake.cards.card("lost").status == "inputting"
    again = await http.post(BOTH, json=body)
    assert (again.status_code, again.json()["code"]) == (400, "param.outTrackIdExist")
    unknown = await http.put(STREAM, json=frame("never-made", "hi"))  # an id DingTalk never made
    assert (unknown.status_code, unknown.json()["code"]) == (400, "param.cardNotExist")
    assert [r.fault for r in fake.requests if r.path == BOTH] == ["lost", None]
