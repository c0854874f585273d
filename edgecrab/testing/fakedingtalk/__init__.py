"""A faithful loopback fake of DingTalk: Stream mode (open-connection, websocket, acks, redelivery)
and the robot REST APIs (tokens, sessionWebhook, batchSend, groupMessages/send, media), with fault
injection and a control API.

One implementation serves our tests, the built-in emulator (``edgecrab sandbox``) and the benchmarks.
It follows ``shared/reference/dingtalk-protocol.md`` (sections 1-5, 7-9, 11 and the checklist in 15).

Run it three ways::

    async with FakeDingTalk(redeliver_after_s=0.3) as fake: ...   # in the test's own loop
    with FakeDingTalkThread(redeliver_after_s=0.3) as fake: ...   # own thread + loop (blocking clients)
    python -m edgecrab.testing.fakedingtalk --port 0 --app-key K --app-secret S  # prints {"base_url": ...}

Point a gateway at it: OpenAPI base and open-connection host = ``fake.base_url``; the websocket
endpoint comes back from open-connection (``ws://127.0.0.1:<port>/connect``); sessionWebhooks in built
messages point at ``{base_url}/robot/sendBySession?session=<hex>``.

Public API of :class:`FakeDingTalk` (``fake``):

- construction: ``FakeDingTalk(*, apps=None, users=None, host="127.0.0.1", port=0,
  redeliver_after_s=60.0, max_redeliveries=3, redeliver_new_id=False, webhook_ttl_s=5400, token_ttl_s=7200,
  body_limit=20000, ticket_ttl_s=90, disconnect_close_after_s=10, deliver_unmentioned=False, kick_older=False,
  duplicate_after_ack=0.0, media_size=2048, seed=None)``; ``await start()`` / ``await stop()`` /
  ``async with``. Defaults: one app ``ding_test_key``/``test_secret_value``; users ``manager807``
  张三 (admin), ``user1001`` 李四, ``user1002`` Alice Chen, ``user1003`` Bob Smith, and an outsider
  王五 from another corp with no staff id. Every timing/limit keyword is also a live attribute
  (``fake.redeliver_after_s = 0.1``).
- addresses: ``base_url``, ``ws_endpoint``, ``port``, ``apps``, ``users``, ``user(ref)``,
  ``app(ref)``, ``add_user(FakeUser)``, ``add_group(cid, title)``, ``dm_conversation_id(user, app=None)``.
- message builders return decoded ``data`` dicts exactly as DingTalk sends them; ``**overrides``
  replace top-level keys and ``DROP`` removes one; every builder takes ``app=``; media kinds take
  ``conversation_id=`` to be sent in a group (DM otherwise):
  ``dm(user, text)``, ``group(user, text, *, conversation_id=DEFAULT_GROUP_ID, title=None,
  at_bot=True, at_users=())``, ``bare_at(user)``, ``rich_text(user, items)`` (str = text,
  bytes = picture), ``picture(user, content=None)``, ``audio(user, recognition)``, ``video(user)``,
  ``file(user, file_name)``, ``quoted(user, text, *, quoted_text, quoted_sender=None|"bot",
  quoted_msgtype="text", variant="text"|"content")``, ``unknown(user)``,
  ``card_action(user, out_track_id, action_ids=...)`` (push it with ``topic=CARD_CALLBACK_TOPIC``),
  ``message(kind, user, text, **options)``; ``register_media(app, bytes) -> downloadCode``.
- outbound media: ``POST /media/upload`` checks the token, the type and DingTalk's size and format rules
  (``Settings.upload_limit``) and keeps each upload in ``fake.state.uploads`` (mediaId -> blob, with the
  uploading app); sends naming another app's or an unknown mediaId are refused; ``GET /_fake/media/<id>``
  serves uploads to the web chat (:mod:`~edgecrab.testing.fakedingtalk.uploads`).
- stream: ``await push(data, *, app=None, message_id=None, topic=CALLBACK_TOPIC) -> messageId``
  (tracked and redelivered with the identical frame until acked 200, or with a new ``headers.messageId``
  each time under ``redeliver_new_id``; each delivery goes to one random live connection of the app,
  random from ``seed``; a group message without @robot
  is dropped as real DingTalk does, unless ``deliver_unmentioned``);
  ``await push_event(event_type, data=None, *, app=None, corp_id=None, message_id=None)``;
  ``await push_raw(frame, *, app=None, conn=None)``; ``await inject_duplicate(message_id)``;
  ``await ping(conn=None, opaque=None) -> opaque`` (result in ``pings``);
  ``await disconnect(conn=None, reason="connection is expired", *, app=None) -> [connection ids]``;
  ``await abort(conn=None, *, app=None)``; ``await close(conn=None, code=1000, *, app=None)``.
  ``conn`` is a :class:`FakeConnection`, a connection id, or ``None`` for every live connection.
  ``zombie`` is a bool attribute.
- faults: ``fake.faults`` (:class:`FaultPlan`): ``fail(path_glob, status=500, body=None, *,
  times=None, rate=None, kinds=None, method=None)``, ``delay(path_glob, seconds, ...)``, ``clear()``,
  attributes ``reject_credentials``, ``qps_limit``, ``api_count_limit``, ``flow_control`` (staff
  ids), ``webhook_dies_after_s``, ``webhook_per_minute``; ``fake.expire_tokens_now(app=None)``,
  ``fake.expire_webhooks_now(app=None, conversation_id=None)``, ``fake.advance_clock(seconds)``.
- observation (monotonic ``t`` on every record, arrival order): ``acks`` (:class:`AckRecord`),
  ``outbound`` (:class:`OutboundRecord`), ``requests`` (:class:`RestRecord`), ``unknown_routes``
  (the requests to a method and path the fake does not serve, answered with DingTalk's "no such API"
  error: HTTP 404 ``InvalidAction.NotFound`` under ``/v1.0/``, errcode 404 elsewhere), ``open_requests``
  (:class:`OpenRequest`), ``pings`` (:class:`PingRecord`), ``connections`` (live),
  ``all_connections``, ``connections_opened``, ``tickets_issued``, ``redeliveries``, ``stats()``,
  ``messages_for(cid)``, ``acks_for(message_id)``, ``deliveries_of(message_id)``, ``reset_records()``;
  ``await wait_for(predicate, timeout=5.0)``, ``await wait_for_ack(message_id, code=200)``,
  ``await wait_for_outbound(count=1, conversation_id=None)``, ``await wait_for_connections(count=1)``;
  ``subscribe(replay=False)`` -> async iterator of event dicts (``kind``: ``connection``, ``frame``,
  ``ack``, ``redelivery``, ``rest``, ``outbound``).

:class:`FakeDingTalkThread` (``start()``, ``stop()``, ``call(coro)``, ``call_async(coro)``, ``fake``)
runs it in its own thread. The control API is documented in :mod:`edgecrab.testing.fakedingtalk.control`.
"""

from edgecrab.testing.fakedingtalk.bus import Subscription
from edgecrab.testing.fakedingtalk.connection import FakeConnection
from edgecrab.testing.fakedingtalk.faults import FAULT_KINDS, FaultPlan
from edgecrab.testing.fakedingtalk.models import (
    CALLBACK_TOPIC,
    CARD_CALLBACK_TOPIC,
    DEFAULT_APP_KEY,
    DEFAULT_APP_SECRET,
    DEFAULT_CORP_ID,
    AckRecord,
    FakeApp,
    FakeUser,
    OpenRequest,
    OutboundRecord,
    PingRecord,
    RestRecord,
    default_users,
)
from edgecrab.testing.fakedingtalk.payloads import DEFAULT_GROUP_ID, DROP, KINDS
from edgecrab.testing.fakedingtalk.server import FakeDingTalk
from edgecrab.testing.fakedingtalk.state import Settings
from edgecrab.testing.fakedingtalk.thread import FakeDingTalkThread

__all__ = [
    "CALLBACK_TOPIC",
    "CARD_CALLBACK_TOPIC",
    "DEFAULT_APP_KEY",
    "DEFAULT_APP_SECRET",
    "DEFAULT_CORP_ID",
    "DEFAULT_GROUP_ID",
    "DROP",
    "FAULT_KINDS",
    "KINDS",
    "AckRecord",
    "FakeApp",
    "FakeConnection",
    "FakeDingTalk",
    "FakeDingTalkThread",
    "FakeUser",
    "FaultPlan",
    "OpenRequest",
    "OutboundRecord",
    "PingRecord",
    "RestRecord",
    "Settings",
    "Subscription",
    "default_users",
]
