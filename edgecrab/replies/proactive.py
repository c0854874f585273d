"""Proactive messages: the robot speaks first (``edgecrab send``, ``POST /v1/send``, ``gateway.send``).

A proactive message answers nothing, so it has no sessionWebhook: its route (:func:`routes`) is a
:class:`~edgecrab.events.ReplyRoute` without one, and :class:`~edgecrab.dingtalk.rest.DingTalkSender` sends
it through ``oToMessages/batchSend`` (a DM, one route per staff id) or ``groupMessages/send`` (a group, by
its openConversationId). Everything else is a reply's way: :func:`record` formats and splits the text
(:func:`~edgecrab.replies.format.prepare_reply`) and records the chunks in a delivery ledger, whose
:class:`~edgecrab.replies.delivery.Delivery` sends them in order, paced, retried, re-split when too long.

* In a running gateway, that ledger is the gateway's (:meth:`Gateway.send <edgecrab.gateway.Gateway.send>`).
* :func:`send_direct` (``edgecrab send`` with no gateway to go through) builds a sender and a Delivery over
  a temporary in-memory SQLite ledger, sends, and reports.

A delivery id names the replies of one send (one per staff id), joined by ``.``: the id is all
:func:`delivery_state` needs to read their chunks back from the ledger, after a restart too.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import anyio

from edgecrab.config.model import DEFAULT_ROBOT
from edgecrab.events import Message, ReplyRoute
from edgecrab.replies.format import Format, prepare_reply
from edgecrab.store.base import CANCELLED, PENDING, SENDING, SENT, UNDELIVERABLE, Store

log = logging.getLogger("edgecrab.replies.proactive")

FORMATS = ("markdown", "text")
MAX_USERS = 100

_STATES = {PENDING: "pending", SENDING: "pending", SENT: "sent", UNDELIVERABLE: "failed", CANCELLED: "failed"}


@dataclass(frozen=True, slots=True)
class SendRequest:
    """One proactive message: to staff ids (DMs) or one group, with its text."""

    text: str
    users: tuple[str, ...] = ()
    group: str = ""
    """The group's openConversationId."""
    at: tuple[str, ...] = ()
    """Staff ids named at the end of a group message (``groupMessages/send`` cannot notify them)."""
    fmt: str = ""
    """``markdown`` or ``text``; empty: the robot's ``reply_format``."""
    title: str = ""
    """The markdown title (the notification's preview); empty: from the text."""
    robot: str = ""
    """The robot's name (``platforms.dingtalk.robots``); empty: the first robot (``default`` with one)."""

    def problems(self) -> list[str]:
        """What makes this request unsendable, worded for the person who wrote it."""
        found = []
        if bool(self.users) == bool(self.group):
            found.append("give either user (staff ids) or group (an openConversationId), not both or neither")
        if len(self.users) > MAX_USERS:
            found.append(f"at most {MAX_USERS} users per send")
        if any(not u.strip() for u in self.users):
            found.append("a user staff id is empty")
        if self.group and not self.group.strip():
            found.append("the group's openConversationId is empty")
        if any(not a.strip() for a in self.at):
            found.append("an at staff id is empty")
        if self.at and not self.group:
            found.append("at is for group messages only")
        if not self.text.strip():
            found.append("the message text is empty")
        if self.fmt and self.fmt not in FORMATS:
            found.append(f"format must be markdown or text, not {self.fmt!r}")
        return found

    @classmethod
    def from_json(cls, data: Any) -> SendRequest:
        """The body of ``POST /v1/send``; ValueError naming what is wrong."""
        if not isinstance(data, dict):
            raise ValueError("the body must be a JSON object")
        unknown = sorted(set(data) - {"text", "user", "group", "at", "format", "title", "robot"})
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(unknown)}")
        fields: dict[str, Any] = {}
        for name in ("text", "group", "format", "title", "robot"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise ValueError(f"{name} must be a string")
            if name == "group" and name in data and not value.strip():
                raise ValueError("group is empty: give the group's openConversationId")
            fields[name] = value
        lists: dict[str, tuple[str, ...]] = {}
        for name in ("user", "at"):
            value = data.get(name, [])
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a staff id or a list of them")
            lists[name] = tuple(value)
        return cls(
            text=fields["text"], users=lists["user"], group=fields["group"], at=lists["at"],
            fmt=fields["format"], title=fields["title"], robot=fields["robot"],
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"text": self.text}
        if self.robot:
            body["robot"] = self.robot
        if self.users:
            body["user"] = list(self.users)
        if self.group:
            body["group"] = self.group
        for name, value in (("at", list(self.at)), ("format", self.fmt), ("title", self.title)):
            if value:
                body[name] = value
        return body


def unknown_robot(name: str, names: list[str]) -> str:
    """The error for a send naming a robot the configuration does not have."""
    return f"unknown robot {name!r}: the robots here are {', '.join(repr(n) for n in names)}"


def robot_config(config: Any, name: str) -> Any:
    """The robot ``name`` of ``config`` (a :class:`~edgecrab.config.model.Config`; empty: its first robot);
    ValueError if it has none of that name."""
    robot = config.robot(name) if name else config.dingtalk
    if robot is None:
        raise ValueError(unknown_robot(name, [r.name for r in config.robots]))
    return robot


def routes(request: SendRequest, robot_code: str) -> list[ReplyRoute]:
    """One route per recipient, none with a sessionWebhook: the OpenAPI sends."""
    if request.group:
        return [ReplyRoute(robot_code, request.group, True)]
    return [ReplyRoute(robot_code, staff_id, False, sender_staff_id=staff_id) for staff_id in request.users]


def request_format(base: Format, request: SendRequest) -> Format:
    """``base`` (the robot's reply format) with the request's format and title."""
    fmt = base
    if request.fmt and request.fmt != base.fmt:
        from edgecrab.dingtalk.markdown import to_dingtalk_markdown, to_plain_text

        render = to_dingtalk_markdown if request.fmt == "markdown" else to_plain_text
        fmt = dataclasses.replace(fmt, fmt=request.fmt, render=render)
    if request.title:
        title = request.title
        fmt = dataclasses.replace(fmt, title=lambda _text: title)
    return fmt


def _text(request: SendRequest, fmt: str) -> str:
    if not request.at:
        return request.text
    separator = "\n\n" if fmt == "markdown" else "\n"
    return request.text + separator + " ".join(f"@{staff_id}" for staff_id in request.at)


async def record(
    delivery: Any, fmt: Format, request: SendRequest, robot_code: str, message: Message | None = None
) -> str:
    """Record ``request``'s chunks in ``delivery``'s ledger (one reply per recipient, all in the ledger
    before any is sent) and wake its senders. Returns the delivery id."""
    fmt = request_format(fmt, request)
    text = _text(request, fmt.fmt)
    prepared = [
        prepare_reply(fmt, route, text, mention=False, message=message, sent_as=request.fmt)
        for route in routes(request, robot_code)
    ]
    await delivery.store.outbox_add([chunk for p in prepared for chunk in p.chunks])
    for p in prepared:
        delivery.recorded(p)
    return ".".join(p.reply_id for p in prepared)


async def submit(delivery: Any, request: SendRequest, robot_code: str) -> str:
    """Check ``request``, then :func:`record` it in a running gateway's ledger; the delivery id, or
    ValueError naming every problem."""
    problems = request.problems()
    if problems:
        raise ValueError("; ".join(problems))
    return await record(delivery, delivery.format, request, robot_code)


async def send(
    delivery: Any,
    robot_code: str,
    *,
    text: str,
    user: str | list[str] | tuple[str, ...] = (),
    group: str = "",
    at: list[str] | tuple[str, ...] = (),
    format: str = "",
    title: str = "",
    robot: str = "",
) -> str:
    """A proactive message (the robot speaks first) to staff id(s) ``user`` or the group whose
    openConversationId is ``group``, through ``delivery``'s ledger: sent as replies are (in order, paced,
    retried). The delivery id (``GET /v1/deliveries/{id}``); ValueError when the request cannot be sent (both
    or neither target, empty text, an unknown robot)."""
    users = (user,) if isinstance(user, str) else tuple(user)
    request = SendRequest(
        text=text, users=users, group=group, at=tuple(at), fmt=format, title=title, robot=robot
    )
    return await submit(delivery, request, robot_code)


async def delivery_state(store: Store, delivery_id: str) -> dict[str, Any] | None:
    """What ``GET /v1/deliveries/{id}`` answers: the state of the delivery (``pending`` while a chunk
    is unsent, ``failed`` when one was given up, else ``sent``) and of each chunk; None when unknown."""
    replies: list[dict[str, Any]] = []
    for reply_id in delivery_id.split("."):
        chunks = await store.outbox_reply(reply_id) if reply_id else []
        if not chunks:
            return None
        replies.append(
            {
                "reply_id": reply_id,
                "chunks": [
                    {"index": c.index, "state": _STATES.get(c.state, c.state), "error": c.error}
                    for c in chunks
                ],
            }
        )
    states = {c["state"] for r in replies for c in r["chunks"]}
    state = "failed" if "failed" in states else "pending" if "pending" in states else "sent"
    errors = [c["error"] for r in replies for c in r["chunks"] if c["error"]]
    return {"id": delivery_id, "state": state, "errors": errors, "replies": replies}


async def send_direct(config: Any, request: SendRequest, *, timeout_s: float = 300.0) -> dict[str, Any]:
    """Send ``request`` with this process's own DingTalk sender (no gateway running), the way a gateway
    would: the same format, chunking, pacing, rate limits and retries, through a Delivery over an
    in-memory ledger. Returns :func:`delivery_state` once every chunk was sent or given up."""
    from edgecrab.dingtalk.markdown import reply_format
    from edgecrab.dingtalk.rest import DingTalkSender
    from edgecrab.replies.delivery import Delivery
    from edgecrab.store.sqlite import SQLiteStore

    dt = robot_config(config, request.robot)
    store = SQLiteStore(":memory:")
    await store.open()
    try:
        async with DingTalkSender(dt) as sender:
            finished = 0
            done = anyio.Event()
            expected = len(routes(request, sender.robot_code))
            base = reply_format(dt)

            async def notify(kind: str, reply: str, error: Any, message: Message | None) -> None:
                nonlocal finished
                finished += 1
                if finished >= expected:
                    done.set()

            delivery = Delivery(
                store,
                sender,
                request_format(base, request),
                chunk_interval_s=dt.chunk_interval_ms / 1000,
                notify=notify,
            )
            async with anyio.create_task_group() as tg:
                await tg.start(delivery.run)
                delivery_id = await record(delivery, base, request, sender.robot_code)
                with anyio.fail_after(timeout_s):
                    await done.wait()
                tg.cancel_scope.cancel()
            state = await delivery_state(store, delivery_id)
    finally:
        await store.close()
    assert state is not None
    return state


__all__ = [
    "DEFAULT_ROBOT", "SendRequest", "delivery_state", "record", "request_format", "robot_config", "routes",
    "send_direct", "unknown_robot",
]
