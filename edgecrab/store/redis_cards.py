"""The open AI cards of :class:`~edgecrab.store.redis_store.RedisStore`: the
:class:`~edgecrab.store.cardrecords.CardRecords` methods, each one script run (atomic across replicas).

Keys (``P`` = ``storage.prefix``; docs/redis.md lists them all):

* ``P card:<robot>:<outTrackId>`` hash: ``msg``, ``session``, ``owner``, ``route`` (JSON), ``content_key``,
  ``opened_at``, ``shown``, ``state``, ``text``; expires :data:`CARD_TTL_S` after its last write (a safety
  net: a card is forgotten when its run's end is recorded);
* ``P cards:<robot>`` sorted set: the recorded cards' ids by ``opened_at`` (what ``card_adopt`` walks);
* ``P cardmsg:<robot>:<msgId>`` string: the card answering that message (what a run of it again takes).

An owner is gone when its heartbeat ``P replica:<id>`` expired (:mod:`edgecrab.store.redis_coord`).
``card_adopt`` keeps its answer under ``P op:<token>`` for 300 s, so a retry after a broken connection
gets the same cards instead of none.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from edgecrab.store import redis_rows as rows
from edgecrab.store.cardrecords import CardAdoption, CardRecord
from edgecrab.store.redis_pipe import Pipeliner

CARD_TTL_S = 2 * 86400
ADOPT_LOOKED_AT = 2000
"""Recorded cards one ``card_adopt`` looks at (the oldest first)."""

_FIELDS = ("msg", "session", "owner", "route", "content_key", "opened_at", "shown", "state", "text")

# A shared prologue. ARGV[1..3]: prefix, robot, the caller (replica). ``gone(owner)``: no live replica of
# that name; ``take(msg, id)``: the message's card (not ``id``), if its owner is gone or is the caller,
# made the caller's and returned as it was (HGETALL), else nil.
_HEAD = """
local P, robot, me = ARGV[1], ARGV[2], ARGV[3]
local base, index = P .. 'card:' .. robot .. ':', P .. 'cards:' .. robot
local function gone(owner) return owner == '' or redis.call('EXISTS', P .. 'replica:' .. owner) == 0 end
local function take(msg, id)
  if msg == '' then return nil end
  local old = redis.call('GET', P .. 'cardmsg:' .. robot .. ':' .. msg)
  if not old or old == id then return nil end
  local owner = redis.call('HGET', base .. old, 'owner')
  if not owner or (owner ~= me and not gone(owner)) then return nil end
  local was = redis.call('HGETALL', base .. old)
  redis.call('HSET', base .. old, 'owner', me, 'state', '')
  redis.call('EXPIRE', base .. old, ARGV[4])
  return {old, was}
end
local function close(id)
  local msg = redis.call('HGET', base .. id, 'msg')
  redis.call('DEL', base .. id)
  redis.call('ZREM', index, id)
  if msg and msg ~= '' and redis.call('GET', P .. 'cardmsg:' .. robot .. ':' .. msg) == id then
    redis.call('DEL', P .. 'cardmsg:' .. robot .. ':' .. msg)
  end
end
"""

# ARGV[4]: ttl; 5: card id; 6: '1' to record it (else only take); 7..: the record's fields (_FIELDS).
OPEN = _HEAD + """
local id, msg = ARGV[5], ARGV[7]
local taken = take(msg, id)
if taken then return taken end
if ARGV[6] ~= '1' then return {} end
redis.call('HSET', base .. id, 'msg', msg, 'session', ARGV[8], 'owner', ARGV[9], 'route', ARGV[10],
  'content_key', ARGV[11], 'opened_at', ARGV[12], 'shown', ARGV[13], 'state', ARGV[14], 'text', ARGV[15])
redis.call('EXPIRE', base .. id, ARGV[4])
redis.call('ZADD', index, ARGV[12], id)
if msg ~= '' then redis.call('SET', P .. 'cardmsg:' .. robot .. ':' .. msg, id, 'EX', ARGV[4]) end
return {}
"""

# ARGV[4]: ttl; 5: card id; 6..: field, value pairs. Only a recorded card.
UPDATE = _HEAD + """
local k = base .. ARGV[5]
if redis.call('EXISTS', k) == 0 then return 0 end
for i = 6, #ARGV, 2 do redis.call('HSET', k, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', k, ARGV[4])
return 1
"""

# ARGV[4]: card id; 5: its owner ('' for any).
CLOSE = _HEAD + """
if ARGV[5] ~= '' and redis.call('HGET', base .. ARGV[4], 'owner') ~= ARGV[5] then return 0 end
close(ARGV[4])
return 1
"""

# ARGV[4]: ttl; 5: starting ('1'); 6: token; 7: how many to look at; 8..: ``mine``. Returns {finish ids,
# waiting ids} (see CardRecords.card_adopt).
ADOPT = _HEAD + """
local cached = redis.call('GET', P .. 'op:' .. ARGV[6])
if cached then return cjson.decode(cached) end
local starting, mine = ARGV[5] == '1', {}
for i = 8, #ARGV do mine[ARGV[i]] = true end
local finish, waiting = {}, {}
for _, id in ipairs(redis.call('ZRANGE', index, 0, tonumber(ARGV[7]) - 1)) do
  local f = redis.call('HMGET', base .. id, 'owner', 'msg', 'state')
  local owner, msg, state = f[1], f[2], f[3]
  if not owner then
    redis.call('ZREM', index, id)
  else
    local ms = msg ~= '' and redis.call('HGET', P .. 'inbox:' .. robot .. ':msg:' .. msg, 'state')
    local finished = not (ms == 'received' or ms == 'processing')
    if state == 'done' then
      if finished then close(id) end
    elseif (owner == me and (starting or mine[id])) or (owner ~= me and gone(owner)) then
      if not finished then
        if owner == me then table.insert(waiting, id) end
      else
        redis.call('HSET', base .. id, 'owner', me)
        table.insert(finish, id)
      end
    end
  end
end
local result = {finish, waiting}
redis.call('SET', P .. 'op:' .. ARGV[6], cjson.encode(result), 'EX', 300)
return result
"""


def _record(robot: str, card_id: str, flat: Sequence[str]) -> CardRecord:
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    return CardRecord(
        robot,
        card_id,
        h.get("msg", ""),
        h.get("session", ""),
        h.get("owner", ""),
        json.loads(h.get("route") or "{}"),
        h.get("content_key", ""),
        float(h.get("opened_at") or 0.0),
        h.get("shown", ""),
        h.get("state", ""),
        h.get("text", ""),
    )


def _ids(value: Any) -> list[str]:
    """A Lua list as decoded (an empty one may come back as ``{}`` from cjson)."""
    return [str(v) for v in value] if isinstance(value, list) else []


class RedisCards:
    """Mixed into :class:`~edgecrab.store.redis_store.RedisStore`, which provides these."""

    url: str
    prefix: str

    @property
    def pipe(self) -> Pipeliner:
        raise NotImplementedError

    async def _cards(self, source: str, robot: str, replica: str, *args: Any) -> Any:
        with rows.reachable(self.url):
            return await self.pipe.script(source, [], [self.prefix, robot, replica, *args])

    def _taken(self, robot: str, answer: Any) -> CardRecord | None:
        return _record(robot, str(answer[0]), answer[1]) if answer else None

    async def card_open(self, record: CardRecord) -> CardRecord | None:
        r = record
        fields = [r.msg_id, r.session_key, r.owner, json.dumps(r.route), r.content_key, repr(r.opened_at),
                  r.shown, r.state, r.text]
        answer = await self._cards(OPEN, r.robot, r.owner, CARD_TTL_S, r.card_id, "1", *fields)
        return self._taken(r.robot, answer)

    async def card_take(self, robot: str, msg_id: str, replica: str) -> CardRecord | None:
        answer = await self._cards(OPEN, robot, replica, CARD_TTL_S, "", "0", msg_id)
        return self._taken(robot, answer)

    async def card_update(
        self,
        robot: str,
        card_id: str,
        *,
        shown: str | None = None,
        state: str | None = None,
        text: str | None = None,
    ) -> None:
        changes = (("shown", shown), ("state", state), ("text", text))
        pairs = [x for k, v in changes if v is not None for x in (k, v)]
        if pairs:
            await self._cards(UPDATE, robot, "", CARD_TTL_S, card_id, *pairs)

    async def card_close(self, robot: str, card_id: str, owner: str = "") -> None:
        await self._cards(CLOSE, robot, "", card_id, owner)

    async def card_get(self, robot: str, card_id: str) -> CardRecord | None:
        with rows.reachable(self.url):
            h = await self.pipe.call("HGETALL", f"{self.prefix}card:{robot}:{card_id}")
        if not h:
            return None
        return _record(robot, card_id, [x for kv in h.items() for x in kv])

    async def card_adopt(
        self, robot: str, replica: str, *, starting: bool = False, mine: Sequence[str] = ()
    ) -> CardAdoption:
        token = uuid.uuid4().hex
        args = [CARD_TTL_S, int(starting), token, ADOPT_LOOKED_AT, *mine]
        answer = await self._cards(ADOPT, robot, replica, *args)
        finish, waiting = _ids(answer[0]), _ids(answer[1])
        found = []
        with rows.reachable(self.url):
            hashes = await self.pipe.calls([("HGETALL", f"{self.prefix}card:{robot}:{c}") for c in finish])
        for card_id, h in zip(finish, hashes, strict=True):
            if h:
                found.append(_record(robot, card_id, [x for kv in h.items() for x in kv]))
        return CardAdoption(found, waiting)
