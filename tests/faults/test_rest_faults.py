"""REST-side faults: failing sends, expiring access tokens, expiring sessionWebhooks.

Replies are several chunks long (``max_message_length`` is small) and every word of every message is unique,
so the order of words in each conversation's outbound messages proves chunk order, and their counts prove that
nothing was lost or sent twice.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio
import pytest

from edgecrab.testing.fakedingtalk import FakeDingTalk
from tests.component.gwkit import ScriptedAgent, quiescent
from tests.faults.conftest import SecretWatch
from tests.faults.kit import (
    WORD,
    FastRetryGateway,
    add_users,
    every,
    fault_config,
    gateway_running,
    tally,
    words,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

TRANSIENT = ["500", "502", "503", "504", "429", "qps", "qps_api"]
GROUP = "cidFaultGroup=="


def _order_problems(fake: FakeDingTalk, sequences: dict[str, list[str]]) -> list[str]:
    problems = []
    for cid, expected in sequences.items():
        seen = [w for r in fake.messages_for(cid) for w in WORD.findall(r.text)]
        if seen != expected:
            at = next((i for i, (a, b) in enumerate(zip(seen, expected, strict=False)) if a != b), None)
            problems.append(f"{cid}: {len(seen)}/{len(expected)} words, first difference at {at}")
    return problems


async def test_20_percent_of_sends_fail_every_reply_delivered_in_order(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    per_conversation, n_words = 4, 30
    async with FakeDingTalk(seed=20) as fake:
        secret_watch.watch(fake)
        users = add_users(fake, 8)
        rule = fake.faults.fail("*/robot/*", rate=0.2, kinds=TRANSIENT)
        config = fault_config(fake, tmp_path, max_message_length=80)
        expected: dict[str, list[str]] = {}
        sequences: dict[str, list[str]] = {}
        n = 0
        past = int((time.time() - 3600) * 1000)
        async with gateway_running(config, ScriptedAgent(), cls=FastRetryGateway) as gw:
            for _ in range(per_conversation):
                for u, user in enumerate(users + users[:2]):  # the last two speak in one group
                    ws = words(n, n_words)
                    text = " ".join(ws)
                    group = u >= len(users)
                    # Every other conversation has an expired sessionWebhook: OpenAPI sends meet faults too.
                    extra: dict[str, Any] = {"sessionWebhookExpiredTime": past} if u % 2 else {}
                    data = (
                        fake.group(user, text, conversation_id=GROUP, **extra)
                        if group
                        else fake.dm(user, text, **extra)
                    )
                    expected[f"m{n}"] = ws
                    sequences.setdefault(data["conversationId"], []).extend(ws)
                    await fake.push(data)
                    n += 1
                await anyio.sleep(0.05)
            with anyio.move_on_after(40):
                await fake.wait_for(lambda: tally("x", fake, expected).answered == len(expected), 40)
            await quiescent(fake, gw)  # a late duplicate would have been sent by now
            faults = Counter(r.fault for r in fake.requests if r.fault)
            result = tally(
                "rest-20%-fail",
                fake,
                expected,
                chunks=len(fake.outbound),
                injected=sum(faults.values()),
                kinds=dict(faults),
                via=dict(Counter(r.via for r in fake.outbound)),
                failed_replies=gw.delivery.failed_replies,
            )
    print(result)
    assert rule.hits >= 20, f"too few faults injected to prove anything: {result}"
    assert result.ok, result
    assert gw.delivery.failed_replies == 0, result
    assert not _order_problems(fake, sequences), (_order_problems(fake, sequences), str(result))
    statuses = Counter(r.status for r in fake.requests if r.fault)
    assert statuses[403] > 0, f"no 403 QpsLimit reached OpenAPI: {result}"
    chunks_per_reply = len(fake.outbound) / len(expected)
    assert chunks_per_reply > 3, f"replies should be multi-chunk: {result}"


async def test_access_token_expires_mid_run_refreshed_nothing_lost(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    total = 80
    async with FakeDingTalk(token_ttl_s=4) as fake:
        secret_watch.watch(fake)
        users = add_users(fake, 10)
        expiries = [0]

        async def expire() -> None:
            fake.expire_tokens_now()

        expected: dict[str, list[str]] = {}
        past = int((time.time() - 3600) * 1000)
        async with gateway_running(
            fault_config(fake, tmp_path, max_message_length=120), ScriptedAgent(), cls=FastRetryGateway
        ) as gw:
            async with anyio.create_task_group() as tg:
                tg.start_soon(every, 0.3, expire, expiries)
                for i in range(total):
                    ws = words(i, 12)
                    expected[f"m{i}"] = ws
                    # An expired sessionWebhook: every chunk goes through OpenAPI, which needs the token.
                    await fake.push(
                        fake.dm(users[i % len(users)], " ".join(ws), sessionWebhookExpiredTime=past)
                    )
                    await anyio.sleep(0.04)
                with anyio.move_on_after(20):
                    await fake.wait_for(lambda: tally("x", fake, expected).answered == total, 20)
                tg.cancel_scope.cancel()
            await quiescent(fake, gw)  # a late duplicate would have been sent by now
            rejected = [
                r
                for r in fake.requests
                if r.path.startswith("/v1.0/robot/")
                and r.status == 400
                and isinstance(r.response, dict)
                and r.response.get("code") == "InvalidAuthentication"
            ]
            result = tally(
                "token-expiry",
                fake,
                expected,
                expiries=expiries[0],
                rejected_tokens=len(rejected),
                tokens_issued=fake.stats()["tokens_issued"],
                token_fetches=gw.sender.tokens.fetches,
                via=dict(Counter(r.via for r in fake.outbound)),
                failed_replies=gw.delivery.failed_replies,
            )
    print(result)
    assert rejected, f"no send ever met an expired token; the test proves nothing: {result}"
    assert fake.stats()["tokens_issued"] >= 3, result
    assert {r.via for r in fake.outbound} == {"batchSend"}, result
    assert result.ok and gw.delivery.failed_replies == 0, result


async def test_session_webhook_expired_falls_back_to_openapi(
    tmp_path: Path, secret_watch: SecretWatch
) -> None:
    total = 60
    async with FakeDingTalk() as fake:
        secret_watch.watch(fake)
        users = add_users(fake, 10)
        expected: dict[str, list[str]] = {}
        expiries = [0]

        async def expire() -> None:
            fake.expire_webhooks_now()

        # The agent takes 0.2 s, so most webhooks die between the question and the answer.
        async with gateway_running(
            fault_config(fake, tmp_path, max_message_length=120),
            ScriptedAgent(delay=0.2),
            cls=FastRetryGateway,
        ) as gw:
            async with anyio.create_task_group() as tg:
                tg.start_soon(every, 0.25, expire, expiries)
                for i in range(total):
                    ws = words(i, 12)
                    expected[f"m{i}"] = ws
                    await fake.push(fake.dm(users[i % len(users)], " ".join(ws)))
                    await anyio.sleep(0.03)
                with anyio.move_on_after(20):
                    await fake.wait_for(lambda: tally("x", fake, expected).answered == total, 20)
                tg.cancel_scope.cancel()
            await quiescent(fake, gw)  # a late duplicate would have been sent by now
            gone = [
                r
                for r in fake.requests
                if r.path == "/robot/sendBySession"
                and isinstance(r.response, dict)
                and r.response.get("errcode") == 300001
            ]
            via = Counter(r.via for r in fake.outbound)
            result = tally(
                "webhook-expiry",
                fake,
                expected,
                expiries=expiries[0],
                session_gone=len(gone),
                via=dict(via),
                failed_replies=gw.delivery.failed_replies,
            )
    print(result)
    assert gone and via["batchSend"] > 0, f"no webhook died mid-run; the test proves nothing: {result}"
    assert result.ok and gw.delivery.failed_replies == 0, result
    # A webhook that answered 300001 is remembered as dead: the next chunks of that reply skip it.
    per_session: Counter[Any] = Counter(r.query.get("session") for r in gone)
    assert max(per_session.values()) == 1, f"a dead webhook was tried again: {per_session.most_common(3)}"
