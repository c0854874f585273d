"""Coordination of replicas on Redis (:class:`~edgecrab.coordination.Coordination`): one run per session
across every replica, the session's queue in arrival order, and signals (/stop, /new, interrupt) over
pub/sub to whichever replica runs the session.

Keys (``P`` = ``storage.prefix``; docs/redis.md lists them all):

* ``P sessq:<session>`` list: the session's messages on every replica, in arrival order, as
  ``<replica>|<msgId>``; the head is the one running (or next). A message leaves it when its run ends.
* ``P lease:<session>`` string: the replica running the session; expires ``storage.lease_s`` after its
  last renewal (every third of that, while the replica lives).
* ``P replica:<id>`` string: the replica is alive; same expiry. The head of a queue whose replica is gone
  (SIGKILLed) is skipped once its lease expired, so the session never wedges.
* ``P deliver:<conversation>`` string: the replica sending the conversation's chunks (one at a time, in
  order); same expiry. Released when the ledger holds nothing unsent for the conversation.
* ``P signals`` pub/sub channel: ``{"what", "key", "from"}``; ``free`` says a session's lease was released
  while messages wait for it (they try again at once instead of at their next poll).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import anyio
import anyio.abc

from edgecrab.coordination import FINISHED, LEASE_LOST, ON_THE_WIRE, SEND, NotFirst, OnSignal
from edgecrab.store import redis_buckets
from edgecrab.store import redis_rows as rows
from edgecrab.store.redis_coord_lua import (
    ACQUIRE,
    ADOPT,
    ENQUEUE,
    GIVE_DELIVERY_BACK,
    ORPHANS,
    RELEASE,
    RENEW,
    START_SEND,
    TAKE_DELIVERY,
)
from edgecrab.store.redis_pipe import Pipeliner

log = logging.getLogger("edgecrab.store.redis")

POLL_S = 0.25
"""A waiting run asks again this often even when no ``free`` signal came (a missed pub/sub message)."""
FREE = "free"
STALE_S = 5.0
"""An entry of this replica's at the head of a session's queue for a message it does not have queued is
dropped after this long (it is being submitted meanwhile, normally for microseconds)."""
ADOPT_LOOKED_AT = 5000
"""Unfinished messages one sweep looks at (the oldest first) for those whose replica is gone."""
ORPHANS_LOOKED_AT = 2000
"""Unsent chunks one failover sweep looks at (the oldest first) for conversations nobody sends."""

_STARTS = (SEND, ON_THE_WIRE, FINISHED, LEASE_LOST)
"""START_SEND's answers, by number; and 4: wait (the pace across replicas), then ask again."""
_WAIT = 4


def _none(msg_id: str) -> bool:
    return False


class _Opened(Protocol):
    url: str
    prefix: str

    @property
    def pipe(self) -> Pipeliner: ...


class RedisCoordination:
    """Session leases, queues, signals, delivery leases and failover for the replicas sharing ``store``'s
    Redis."""

    shared = True

    def __init__(self, store: _Opened, replica: str, lease_s: float) -> None:
        self.store, self.replica_id = store, replica
        self.life = f"{replica}#{secrets.token_hex(4)}"
        """This process among the lives of ``replica``: a replica restarted under the same id (a stable
        ``EDGECRAB_REPLICA_ID``) must not take a chunk its earlier life had on the wire for its own."""
        self.lease_ms = max(int(lease_s * 1000), 1000)
        self.held: dict[str, int] = {}
        """Sessions whose lease this replica holds (how many holds), renewed by the heartbeat."""
        self.delivering: set[str] = set()
        """Conversations whose delivery lease this replica holds, renewed by the heartbeat."""
        self._free: dict[str, anyio.Event] = {}
        self.signals_received = 0

    def _key(self, *parts: str) -> str:
        return self.store.prefix + ":".join(parts)

    def _entry(self, msg_id: str) -> str:
        return f"{self.replica_id}|{msg_id}"

    async def _script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        with rows.reachable(self.store.url):
            return await self.store.pipe.script(source, keys, args)

    # -- the runner's calls --------------------------------------------------------------------------
    def _inbox(self, key: str) -> str:
        """The inbox's key prefix for session ``key``'s robot (a session key starts with the robot code:
        :func:`edgecrab.core.sessions.session_key`)."""
        return self._key("inbox", key.split(":", 1)[0], "")

    async def enqueue(self, key: str, msg_id: str, *, at_most: int | None = None) -> int | None:
        keys = [self._key("sessq", key), self._key("lease", key)]
        args = [self._entry(msg_id), f"|{msg_id}", self._inbox(key), msg_id, self._key("replica", "")]
        most = "" if at_most is None else str(at_most)
        before, queued = await self._script(ENQUEUE, keys, [*args, self.replica_id, most])
        return int(before) if int(queued) else None

    async def waiting(self, key: str) -> int:
        with rows.reachable(self.store.url):
            return int(await self.store.pipe.call("LLEN", self._key("sessq", key)))

    async def drop(self, key: str, msg_ids: list[str]) -> None:
        queue = self._key("sessq", key)
        with rows.reachable(self.store.url):
            await self.store.pipe.calls([("LREM", queue, 0, self._entry(m)) for m in msg_ids])

    @asynccontextmanager
    async def hold(
        self, key: str, msg_id: str, given_up: Callable[[], bool], queued: Callable[[str], bool] = _none
    ) -> AsyncIterator[None]:
        queue, lease, entry = self._key("sessq", key), self._key("lease", key), self._entry(msg_id)
        args = [entry, self.replica_id, self.lease_ms, self._key("replica", ""), self._inbox(key), msg_id]
        acquired, stale = False, dict[str, float]()
        while not given_up():
            answer = await self._script(ACQUIRE, [queue, lease], args)
            got = int(answer[0])
            if got == 1:
                self.held[key] = self.held.get(key, 0) + 1
                acquired = True
                break
            if got == 3:  # another message of ours heads the queue: that one first
                first = str(answer[1])
                if queued(first):
                    raise NotFirst(first)
                # Not queued here (yet: its submit is between its enqueue and its local queue). An entry
                # that stays so is stale (a lost release): dropped after a while.
                stale.setdefault(first, time.monotonic())
                if time.monotonic() - stale[first] > STALE_S:
                    await self.drop(key, [first])
                    continue
            if got in (0, 3):
                event = self._free.setdefault(key, anyio.Event())
                with anyio.move_on_after(POLL_S):
                    await event.wait()
                if self._free.get(key) is event and event.is_set():
                    del self._free[key]
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                if acquired:
                    self.held[key] -= 1
                    if not self.held[key]:
                        del self.held[key]
                free = [self._key("signals"), self._signal(FREE, key)]  # sent when others wait
                await self._script(RELEASE, [queue, lease], [entry, self.replica_id, *free])

    async def signal(self, key: str, what: str) -> None:
        await self._publish(what, key)

    # -- delivery and failover -----------------------------------------------------------------------
    async def take_delivery(self, conversation: str) -> bool:
        args = [self.replica_id, self.lease_ms, self._key("replica", "")]
        if int(await self._script(TAKE_DELIVERY, [self._key("deliver", conversation)], args)) != 1:
            return False
        self.delivering.add(conversation)
        return True

    async def give_delivery_back(self, conversation: str, *, finished: bool = True) -> bool:
        keys = [self._key("deliver", conversation), self._key("outbox", "conv", conversation)]
        args = [self.replica_id, self.lease_ms, int(finished)]
        if int(await self._script(GIVE_DELIVERY_BACK, keys, args)) != 1:
            return False
        self.delivering.discard(conversation)
        return True

    async def start_sending(
        self, conversation: str, reply_id: str, index: int, interval_s: float
    ) -> str:
        keys = [
            self._key("deliver", conversation),
            self._key("outbox", "chunk", rows.chunk_id(reply_id, index)),
            self._key("lastsent", conversation),
        ]
        while True:
            now, replicas = repr(time.time()), self._key("replica", "")
            args = [self.replica_id, self.lease_ms, replicas, now, repr(interval_s), self.life]
            answer = await self._script(START_SEND, keys, args)
            if int(answer[0]) != _WAIT:
                break
            await anyio.sleep(float(answer[1]))  # not marked meanwhile: a stop now loses nothing
        outcome = _STARTS[int(answer[0])]
        if outcome == LEASE_LOST:
            self.delivering.discard(conversation)
        else:
            self.delivering.add(conversation)
        return outcome

    async def adopt(self, robot: str, *, starting: bool = False) -> list[str] | None:
        args = [self.store.prefix, robot, self.replica_id, int(starting), ADOPT_LOOKED_AT]
        return [str(m) for m in await self._script(ADOPT, [], args)]

    async def reserve(self, bucket: str, rate: float, burst: float) -> float | None:
        return await redis_buckets.reserve(self._script, self._key("rate", bucket), rate, burst)

    async def orphaned_conversations(self) -> list[str]:
        return [str(c) for c in await self._script(ORPHANS, [], [self.store.prefix, ORPHANS_LOOKED_AT])]

    def _signal(self, what: str, key: str) -> str:
        return json.dumps({"what": what, "key": key, "from": self.replica_id})

    async def _publish(self, what: str, key: str) -> None:
        with rows.reachable(self.store.url):
            await self.store.pipe.call("PUBLISH", self._key("signals"), self._signal(what, key))

    # -- heartbeat and listener ----------------------------------------------------------------------
    async def run(
        self, on_signal: OnSignal, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await self._renew()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._heartbeat)
            await tg.start(self._listen, on_signal)
            task_status.started()

    async def _renew(self) -> None:
        keys = [self._key("replica", self.replica_id), *(self._key("lease", k) for k in self.held)]
        keys += [self._key("deliver", c) for c in self.delivering]
        await self._script(RENEW, keys, [self.replica_id, self.lease_ms])

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.lease_ms / 3000)
            try:
                await self._renew()
            except Exception as exc:  # Redis away: the leases may lapse; the next beat tries again
                log.warning("[replicas] %s: could not renew leases: %s", self.replica_id, exc)

    async def _listen(
        self, on_signal: OnSignal, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the signals channel for as long as this runs; a broken connection is opened again."""
        backoff, started = 0.2, False
        while True:
            client = rows.connect(self.store.url, rows.RETRY, connections=1, wait_s=5.0)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self._key("signals"))
                    if not started:
                        task_status.started()
                        started = True
                    backoff = 0.2
                    while True:
                        message = await pubsub.get_message(timeout=1.0)
                        if message is not None:
                            await self._heard(message.get("data"), on_signal)
            except Exception as exc:
                log.warning(
                    "[replicas] %s: signal channel lost (%s); again in %.1f s", self.replica_id, exc, backoff
                )
                if not started:
                    task_status.started()
                    started = True
                await anyio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    await client.aclose()

    async def _heard(self, raw: Any, on_signal: OnSignal) -> None:
        try:
            signal = json.loads(raw)
            what, key, sender = str(signal["what"]), str(signal["key"]), str(signal["from"])
        except (ValueError, TypeError, KeyError):
            log.warning("[replicas] ignored a malformed signal (%d characters)", len(str(raw)))
            return
        if what == FREE:
            event = self._free.pop(key, None)
            if event is not None:
                event.set()
            return
        if sender == self.replica_id:
            return  # this replica acted on it before sending it
        self.signals_received += 1
        try:
            await on_signal(key, what)
        except Exception:
            log.exception("[replicas] %s: acting on %s for %s failed", self.replica_id, what, key)
