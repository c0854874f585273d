"""Issue 4, the sending side: Delivery against the fake DingTalk over loopback sockets.

Ordered and paced chunks (timestamps taken from the fake's outbound records), ordering under injected
faults, re-splitting of chunks DingTalk rejects as too long, the ledger across a restart, ``/stop``
mid-reply, the group @mention on the last chunk, ``(i/n)`` markers and snapshots of request bodies.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from edgecrab.config import DingTalkConfig
from edgecrab.dingtalk.convert import to_message
from edgecrab.dingtalk.markdown import title_preview, to_dingtalk_markdown
from edgecrab.dingtalk.rest import DingTalkSender, SendResult
from edgecrab.events import ReplyRoute
from edgecrab.replies.delivery import Delivery
from edgecrab.replies.format import Format
from edgecrab.replies.proactive import delivery_state
from edgecrab.retry import Backoff
from edgecrab.store import SENT, SQLiteStore
from edgecrab.testing.fakedingtalk import FakeDingTalk, OutboundRecord

pytestmark = pytest.mark.anyio

INTERVAL = 0.05
BATCH = "/v1.0/robot/oToMessages/batchSend"


def _route(fake: FakeDingTalk, *, group: bool = False, user: int = 1, **changes: Any) -> ReplyRoute:
    u = fake.users[user]
    data = fake.group(u, "question") if group else fake.dm(u, "question")
    route = to_message(data, robot_code_fallback=fake.apps[0].client_id).route
    assert route is not None
    return replace(route, **changes)


def _paragraphs(n: int, width: int = 40) -> str:
    return "\n\n".join(f"part {i:02d} " + "x" * (width - 8) for i in range(1, n + 1))


class _Sender:
    """Wraps the real sender; after ``crash_after`` accepted messages it hangs like a killed process."""

    def __init__(self, inner: DingTalkSender, crash_after: int | None = None) -> None:
        self.inner = inner
        self.crash_after = crash_after
        self.accepted = 0
        self.crashed = anyio.Event()

    async def send(self, route: ReplyRoute, **kw: Any) -> SendResult:
        if self.crash_after is not None and self.accepted >= self.crash_after:
            self.crashed.set()
            await anyio.sleep_forever()
        result = await self.inner.send(route, **kw)
        self.accepted += int(result.ok)
        return result


@contextlib.asynccontextmanager
async def delivering(
    fake: FakeDingTalk,
    db: Path,
    *,
    max_chars: int = 6000,
    markers: bool = False,
    interval: float = INTERVAL,
    crash_after: int | None = None,
    send_retries: int = 4,  # 5 attempts, as the Delivery's own rounds were before there was one policy
    **kw: Any,
) -> AsyncIterator[tuple[Delivery, _Sender]]:
    app = fake.apps[0]
    config = DingTalkConfig(
        app_key=app.client_id,
        app_secret=app.client_secret,
        robot_code=app.robot_code or app.client_id,
        api_base=fake.base_url,
        webhook_expiry_margin_s=0,
        send_retries=send_retries,
    )
    fmt = Format("markdown", to_dingtalk_markdown, title_preview, max_chars, 20000, markers)
    store = SQLiteStore(db)
    await store.open()
    async with httpx.AsyncClient() as http:
        dingtalk = DingTalkSender(config, client=http)
        dingtalk.backoff_policy = Backoff(send_retries + 1, 0.01, 0.1)  # the real policy, shorter waits
        sender = _Sender(dingtalk, crash_after)
        delivery = Delivery(store, sender, fmt, chunk_interval_s=interval, **kw)
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(delivery.run)
                yield delivery, sender
                tg.cancel_scope.cancel()
        finally:
            await store.close()


def _words(texts: Iterable[str]) -> list[str]:
    """The words of several messages in order (a message is sent without its trailing whitespace)."""
    return " ".join(texts).split()


def _tries(fake: FakeDingTalk, path: str) -> int:
    return sum(1 for r in fake.requests if r.path == path)


async def _all_sent(d: Delivery) -> None:
    """Wait until the ledger has no chunk left to send: after that, DingTalk receives nothing more."""
    with anyio.fail_after(10):
        while await d.store.outbox_pending():  # noqa: ASYNC110 - polling the ledger
            await anyio.sleep(0.01)


def _gaps(records: list[OutboundRecord]) -> list[float]:
    return [b.t - a.t for a, b in zip(records, records[1:], strict=False)]


async def test_three_chunk_group_reply_request_bodies(tmp_path: Path, snapshot: Any) -> None:
    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=90, markers=True) as (d, _),
    ):
        route = _route(fake, group=True)
        text = "## Plan\n\n" + _paragraphs(3, 50)
        await d.enqueue(route, text, session_key="s1")
        await _all_sent(d)
        sent = fake.messages_for(route.conversation_id)
        assert len(sent) == 3
        assert [r.via for r in sent] == ["webhook"] * 3
        # Only the last chunk @mentions the asker; every chunk is labelled (i/n), in title and text.
        assert [r.at_user_ids for r in sent] == [[], [], [route.sender_staff_id]]
        assert [r.text.split(" ", 1)[0].split("\n", 1)[0] for r in sent] == ["(1/3)", "(2/3)", "(3/3)"]
        assert [r.body for r in sent] == snapshot


async def test_chunks_are_fifo_and_paced_also_between_replies(tmp_path: Path) -> None:
    interval = 0.25
    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60, interval=interval) as (
            d,
            _,
        ),
    ):
        route = _route(fake)
        await d.enqueue(route, _paragraphs(3))
        await d.enqueue(route, "second reply")
        sent = await fake.wait_for_outbound(4, route.conversation_id)
        assert [r.text[:7] for r in sent] == ["part 01", "part 02", "part 03", "second "]
        # A reply arriving after the worker went idle is still paced against the previous message.
        await _all_sent(d)
        await d.enqueue(route, "third reply")
        sent = await fake.wait_for_outbound(5, route.conversation_id)
        gaps = _gaps(sent)
        assert min(gaps) >= interval, gaps
        assert max(gaps) < interval + 1.0, gaps  # paced, not stalled


async def test_order_and_exactly_once_under_injected_faults(tmp_path: Path) -> None:
    async with (
        FakeDingTalk(seed=7) as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60, send_retries=30) as (
            d,
            _,
        ),
    ):
        fake.faults.fail("/robot/sendBySession", rate=0.35, kinds=["500", "503", "429", "reset"])
        fake.faults.fail("/v1.0/robot/*", rate=0.35, kinds=["500", "502", "504"])
        dm, group = _route(fake), _route(fake, group=True, user=2)
        for route in (dm, group):
            await d.enqueue(route, _paragraphs(6))
            await d.enqueue(route, _paragraphs(4).replace("part", "more"))
        expected = [f"part {i:02d}" for i in range(1, 7)] + [f"more {i:02d}" for i in range(1, 5)]
        for route in (dm, group):
            await fake.wait_for_outbound(10, route.conversation_id, timeout=20)
        await _all_sent(d)
        for route in (dm, group):
            sent = fake.messages_for(route.conversation_id)
            assert [r.text[:7] for r in sent] == expected
            assert min(_gaps(sent)) >= INTERVAL
        assert sum(1 for r in fake.requests if r.fault) >= 5, (
            "the faults did not fire; the test proves nothing"
        )
        assert d.failed_replies == 0


async def test_too_long_chunk_is_resplit_and_nothing_is_lost(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db") as (d, _):
        fake.body_limit = 700  # DingTalk refuses what our 20,000-byte budget let through
        route = _route(fake)
        text = _paragraphs(30, 45)  # ~1,400 characters: one chunk for us
        await d.enqueue(route, text)
        await fake.wait_for(lambda: d.sent_chunks >= 3, 10)
        await _all_sent(d)
        sent = fake.messages_for(route.conversation_id)
        assert d.resplits >= 2  # 1,400 -> 2 x 700 (still too long) -> 4 x 350
        assert all(r.body_bytes <= 700 for r in sent)
        assert _words(r.text for r in sent) == _words([to_dingtalk_markdown(text)])
        assert min(_gaps(sent)) >= INTERVAL


async def test_too_long_over_openapi_with_a_code_fence(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db") as (d, _):
        fake.body_limit = 900
        route = _route(fake, group=True, session_webhook="")  # no webhook: groupMessages/send
        fake.add_group(route.conversation_id)
        code = "\n".join(f"print('line {i:02d}')  # {'y' * 20}" for i in range(40))
        await d.enqueue(route, f"Here:\n\n```python\n{code}\n```\n\nDone.")
        await fake.wait_for(lambda: d.sent_chunks >= 2 and not d.sending, 10)
        sent = fake.messages_for(route.conversation_id)
        assert {r.via for r in sent} == {"groupSend"}
        assert d.failed_replies == 0 and d.resplits >= 1
        for r in sent:  # every piece is valid markdown on its own: fences balanced, language kept
            assert r.text.count("```") % 2 == 0, r.text
        received = "\n".join(r.text for r in sent)
        assert all(f"print('line {i:02d}')" in received for i in range(40))
        assert received.count("```python") == received.count("```") // 2
        assert sent[-1].text.endswith(f"@{route.sender_name}")  # the mention went on the last piece only
        assert all(f"@{route.sender_name}" not in r.text for r in sent[:-1])


async def test_restart_sends_only_the_chunks_left_in_order(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    async with FakeDingTalk() as fake:
        route = _route(fake)
        store = SQLiteStore(db)
        await store.open()
        fmt = Format("markdown", to_dingtalk_markdown, title_preview, 60, 20000, False)
        offline = Delivery(store, _Sender(None), fmt)  # type: ignore[arg-type]  # never started: never sends
        reply_id = await offline.enqueue(route, _paragraphs(5))
        for index in (0, 1):  # the previous process got these out before it died
            await store.outbox_mark(reply_id, index, SENT)
        await store.close()
        async with delivering(fake, db) as (d, _):
            await fake.wait_for_outbound(3, route.conversation_id)
            await _all_sent(d)
            sent = fake.messages_for(route.conversation_id)
            assert [r.text[:7] for r in sent] == ["part 03", "part 04", "part 05"]
            assert await d.store.outbox_pending() == []


async def test_restart_in_the_middle_of_a_resplit_chunk(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    async with FakeDingTalk() as fake:
        fake.body_limit = 600
        route = _route(fake)
        text = _paragraphs(24, 45)
        async with delivering(fake, db, crash_after=2) as (d, sender):
            await d.enqueue(route, text)
            with anyio.fail_after(10):
                await sender.crashed.wait()
        first = [r.text for r in fake.messages_for(route.conversation_id)]
        assert len(first) == 2
        async with delivering(fake, db) as (d, _):
            await fake.wait_for(lambda: not d.sending and d.sent_chunks > 0, 10)
            assert await d.store.outbox_pending() == []
        texts = [r.text for r in fake.messages_for(route.conversation_id)]
        assert len(texts) == len(set(texts))  # nothing repeated
        assert _words(texts) == _words([to_dingtalk_markdown(text)])  # nothing lost, in order


async def test_stop_mid_reply_sends_nothing_more(tmp_path: Path) -> None:
    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60, interval=0.2) as (d, _),
    ):
        route = _route(fake)
        await d.enqueue(route, _paragraphs(6))
        await fake.wait_for_outbound(1, route.conversation_id)
        dropped = await d.cancel(route)
        # Part 1 may still be in flight (DingTalk has it, our ledger says "sending"): it is cancelled too,
        # which changes nothing for it; what matters is what DingTalk receives below.
        assert dropped in (5, 6)
        await d.enqueue(route, "⏹ Stopped.")
        await fake.wait_for_outbound(2, route.conversation_id)
        await _all_sent(d)  # the rest of the reply, had it not been cancelled, would be out by now
        sent = fake.messages_for(route.conversation_id)
        assert [r.text[:7] for r in sent] == ["part 01", "⏹ Stopped."[:7]]
        assert _gaps(sent)[0] >= 0.2


async def test_cancel_for_one_session_spares_another_in_the_same_group(tmp_path: Path) -> None:
    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60, interval=0.1) as (d, _),
    ):
        route = _route(fake, group=True)
        await d.enqueue(route, _paragraphs(4), session_key="g:alice")
        await d.enqueue(route, _paragraphs(2).replace("part", "bobs"), session_key="g:bob")
        await fake.wait_for_outbound(1, route.conversation_id)
        # Alice's part 1 may still be in flight (DingTalk has it, the ledger says "sending"): 4 dropped,
        # or 3 when part 2 had already left (on a slow machine); a part cut off in flight may have arrived.
        dropped = await d.cancel(route, session_key="g:alice")
        assert dropped in (3, 4)
        await fake.wait_for_outbound(3, route.conversation_id)
        await _all_sent(d)
        sent = [r.text[:7] for r in fake.messages_for(route.conversation_id)]
        expected = [["part 01", "bobs 01", "bobs 02"]]
        if dropped == 3:  # part 2 was on the wire when cancelled: DingTalk may have it
            expected.append(["part 01", "part 02", "bobs 01", "bobs 02"])
        assert sent in expected


async def test_stop_during_retry_wait_stops_retrying(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db", send_retries=50) as (d, _):
        route = _route(fake, session_webhook="")  # OpenAPI only
        fake.faults.fail(BATCH, status=503, times=1000)
        await d.enqueue(route, "never arrives")
        await fake.wait_for(lambda: _tries(fake, BATCH) >= 2, 5)
        await d.cancel(route)
        # DingTalk works again, and a later reply to the same conversation goes out after anything still
        # queued there: had the cancelled one been retried, DingTalk would now have it first.
        fake.faults.clear()
        await d.enqueue(route, "after the stop")
        await fake.wait_for_outbound(1, route.conversation_id)
        await _all_sent(d)
        assert [r.text for r in fake.messages_for(route.conversation_id)] == ["after the stop"]


async def test_permanent_failure_gives_up_and_reports(tmp_path: Path) -> None:
    events: list[tuple[str, str, Any]] = []

    async def notify(kind: str, reply: str, error: Any, message: Any) -> None:
        events.append((kind, reply, error))

    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60, notify=notify) as (d, _),
    ):
        lost = _route(fake, session_webhook="", sender_staff_id="")  # no webhook, no staff id: undeliverable
        good = _route(fake, user=2)
        await d.enqueue(lost, _paragraphs(3))
        await d.enqueue(good, "fine")
        await fake.wait_for(lambda: len(events) == 2, 5)
        assert sorted(e[0] for e in events) == ["reply_sent", "send_failed"]
        assert d.failed_replies == 1
        assert await d.store.outbox_pending() == []
        assert [r.text for r in fake.messages_for(good.conversation_id)] == ["fine"]


async def test_a_given_up_reply_never_reads_as_failed_without_its_reason(tmp_path: Path) -> None:
    """Giving up writes the failing chunk's reason before cancelling the rest: a ``GET /v1/deliveries``
    read between the two writes (another commit) said "failed" with no reason, and ``edgecrab send``
    then "DingTalk did not accept the message: no reason given" instead of DingTalk's reason."""
    seen: list[dict[str, Any]] = []
    async with (
        FakeDingTalk() as fake,
        delivering(fake, tmp_path / "d.db", max_chars=60) as (d, _),
    ):
        store = d.store
        for name in ("outbox_cancel", "outbox_mark"):

            def after(write: Any) -> Any:
                async def write_then_read(*args: Any) -> Any:
                    result = await write(*args)
                    seen.append(await delivery_state(store, reply_ids[0]) or {})
                    return result

                return write_then_read

            setattr(store, name, after(getattr(store, name)))
        reply_ids: list[str] = []
        lost = _route(fake, session_webhook="", sender_staff_id="")  # no webhook, no staff id: undeliverable
        reply_ids.append(await d.enqueue(lost, _paragraphs(3)))
        await fake.wait_for(lambda: d.failed_replies == 1, 5)
        failed = [state for state in seen if state.get("state") == "failed"]
        assert failed and all(state["errors"] for state in failed), seen


async def _sender_finished(d: Delivery) -> None:
    with anyio.fail_after(10):
        while d.sending:  # noqa: ASYNC110 - polling Delivery.sending (no event for it)
            await anyio.sleep(0.005)


async def test_a_settled_conversation_gets_its_next_reply_without_reading_the_ledger(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db") as (d, _):
        route = _route(fake)
        reads: list[str | None] = []
        read = d.store.outbox_pending

        async def counting(conversation_key: str | None = None) -> Any:
            reads.append(conversation_key)
            return await read(conversation_key)

        d.store.outbox_pending = counting  # type: ignore[method-assign]
        await d.enqueue(route, "first")
        await fake.wait_for_outbound(1, route.conversation_id)
        await _all_sent(d)
        first_reads = len(reads)
        assert first_reads >= 1  # nothing known about the conversation yet: its sender read the ledger
        for n in range(2, 5):
            await _sender_finished(d)  # else the next reply is simply news for the running sender
            await d.enqueue(route, f"reply {n}")
            await fake.wait_for_outbound(n, route.conversation_id)
        await _all_sent(d)
        assert [r.text for r in fake.messages_for(route.conversation_id)] == [
            "first",
            "reply 2",
            "reply 3",
            "reply 4",
        ]
        # Handed over: only _all_sent's own reads (conversation None) since the first reply.
        assert [r for r in reads[first_reads:] if r is not None] == []


async def test_a_stop_before_the_handed_reply_starts_sends_none_of_it(tmp_path: Path) -> None:
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db") as (d, _):
        route = _route(fake)
        await d.enqueue(route, "first")
        await fake.wait_for_outbound(1, route.conversation_id)
        await _all_sent(d)
        await _sender_finished(d)  # settled
        await d.enqueue(route, "never sent")  # handed to a sender that has not run yet
        assert await d.cancel(route) == 1
        await d.enqueue(route, "⏹ Stopped.")
        await fake.wait_for_outbound(2, route.conversation_id)
        await _all_sent(d)
        assert [r.text for r in fake.messages_for(route.conversation_id)] == ["first", "⏹ Stopped."]


async def test_a_sender_never_reads_the_ledger_while_a_stop_is_being_recorded(tmp_path: Path) -> None:
    """The race behind a repeated part 1 and a whole stopped reply on a busy machine: part 1 is accepted
    while the /stop's write waits for its commit; the sender must not re-read the ledger before it."""
    async with FakeDingTalk() as fake, delivering(fake, tmp_path / "d.db", max_chars=60) as (d, sender):
        route = _route(fake)
        in_send, release_send, release_cancel = anyio.Event(), anyio.Event(), anyio.Event()
        send = sender.send

        async def gated_send(route: ReplyRoute, **kw: Any) -> SendResult:
            in_send.set()
            await release_send.wait()
            return await send(route, **kw)

        cancel = d.store.outbox_cancel

        async def slow_cancel(*args: Any) -> int:
            await release_cancel.wait()
            return await cancel(*args)

        sender.send = gated_send  # type: ignore[method-assign]
        d.store.outbox_cancel = slow_cancel  # type: ignore[method-assign]
        await d.enqueue(route, _paragraphs(4))
        await in_send.wait()
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.cancel, route)
            await anyio.wait_all_tasks_blocked()  # the cancel waits for its write
            release_send.set()  # part 1 is accepted now, after the /stop
            await fake.wait_for_outbound(1, route.conversation_id)
            await anyio.wait_all_tasks_blocked()  # the sender, if it were to re-read, has done so
            release_cancel.set()
        await d.enqueue(route, "⏹ Stopped.")
        await fake.wait_for_outbound(2, route.conversation_id)
        await _all_sent(d)
        assert [r.text[:7] for r in fake.messages_for(route.conversation_id)] == ["part 01", "⏹ Stopped."[:7]]
