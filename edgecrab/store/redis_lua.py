"""The Lua scripts of :class:`~edgecrab.store.redis_store.RedisStore`: every write is one script run, so it
is atomic (Redis runs a script to its end before any other command) and costs one round trip.

**APPLY** runs a list of *operations* given in ``ARGV``: a header (key prefix, idempotency token, the
caller's clock, the inbox and outbox expiries), then each operation's name followed by its arguments
(:class:`~edgecrab.store.redis_rows.Ops` builds them). One method's writes are one list: ``finish_turn``
is usage + turns + chunks + inbox state in one run, so after a crash either all of it happened or none.
Everything is serialised by Python before the script runs (a route that is not JSON fails there, before
anything is written): Redis does not roll a script back, so a script must not fail half-way, and these
only call commands on keys of the types they create.

**Idempotent retries.** redis-py retries a command whose connection broke (our
:data:`~edgecrab.store.redis_rows.RETRY`), and the broken connection may have carried the script *and* lost
its answer. A retried claim would then find its own entry and say "duplicate": the message would be acked
and never answered. So each run carries a fresh token; the first run stores its result under
``<prefix>op:<token>`` for :data:`OP_MEMO_S` seconds, and a retry with the same token returns that result
without doing anything again (no turn appended twice, no counter added twice).

**SWEEP** deletes, in batches, what is finished and older than a horizon (inbox entries, sent chunks,
idle sessions): one batch per run so that a day of callbacks never blocks Redis for long.

Times are passed as the strings Python wrote (``repr`` of a float) and stored as given: Lua numbers print
with 14 digits, so a script never turns a number back into text (only compares them). Key names are built
inside the scripts from the prefix: fine on one Redis server (or a primary with replicas), not on Redis
Cluster (docs/redis.md lists the keys).
"""

from __future__ import annotations

NOT_OWNED = -1
"""What APPLY returns when its ``owned`` operation found the message taken over: nothing was written."""
OP_MEMO_S = 300
"""How long a write's result is kept for a retry of the same run: longer than redis-py keeps retrying
(:data:`~edgecrab.store.redis_rows.RETRY`, about a minute)."""

_LIB = r"""
local P, TOKEN, NOW, INBOX_TTL, OUTBOX_TTL = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local pos = 6
local function take() local v = ARGV[pos]; pos = pos + 1; return v end
local INTS = {'turns', 'messages_in', 'messages_out', 'prompt_tokens', 'completion_tokens'}

local function inbox_key(robot, msg) return P .. 'inbox:' .. robot .. ':msg:' .. msg end
local function sid_key(robot, sid) return P .. 'inbox:' .. robot .. ':sid:' .. sid end
local function chunk_key(id) return P .. 'outbox:chunk:' .. id end

local function ensure_session(key, now)
  local k = P .. 'session:' .. key
  if redis.call('EXISTS', k) == 1 then return end
  redis.call('HSET', k, 'created_at', now, 'last_active_at', now, 'turns', 0, 'messages_in', 0,
    'messages_out', 0, 'prompt_tokens', 0, 'completion_tokens', 0, 'agent_seconds', 0, 'chunks_sent', 0,
    'last_user_text', '', 'last_user_msg_id', '', 'extra', '{}')
  redis.call('ZADD', P .. 'sessions', now, key)
end

local function touch_session(key, now)
  local k = P .. 'session:' .. key
  if tonumber(now) > tonumber(redis.call('HGET', k, 'last_active_at')) then
    redis.call('HSET', k, 'last_active_at', now)
    redis.call('ZADD', P .. 'sessions', now, key)
  end
end

local function set_inbox_state(robot, msg, state, err)
  local k = inbox_key(robot, msg)
  if redis.call('EXISTS', k) == 0 then return end
  redis.call('HSET', k, 'state', state, 'error', err, 'updated_at', NOW)
  if state == 'processing' then redis.call('HINCRBY', k, 'attempts', 1) end
  local at = redis.call('HGET', k, 'received_at')
  local sid = redis.call('HGET', k, 'sid')
  local open, finished = P .. 'inbox:' .. robot .. ':open', P .. 'inbox:' .. robot .. ':finished'
  if state == 'received' or state == 'processing' then
    redis.call('ZREM', finished, msg)
    redis.call('ZADD', open, at, msg)
    redis.call('PERSIST', k)
    if sid ~= '' then redis.call('PERSIST', sid_key(robot, sid)) end
  else
    local owner = redis.call('HGET', k, 'owner')
    if owner then redis.call('ZREM', P .. 'inbox:' .. robot .. ':unrouted:' .. owner, msg) end
    redis.call('ZREM', open, msg)
    redis.call('ZADD', finished, at, msg)
    redis.call('EXPIRE', k, INBOX_TTL)
    if sid ~= '' then redis.call('EXPIRE', sid_key(robot, sid), INBOX_TTL) end
  end
end

local function set_chunk_state(id, state, err)
  local k = chunk_key(id)
  local old = redis.call('HGET', k, 'state')
  if not old then return 0 end
  local open = state == 'pending' or state == 'sending'
  -- A cancelled chunk is never revived (a sender working from an older list); SENT may still be recorded.
  if old == 'cancelled' and open then return 0 end
  redis.call('HSET', k, 'state', state, 'error', err, 'updated_at', NOW)
  if state == 'sending' then redis.call('HINCRBY', k, 'attempts', 1) end
  local ckey = redis.call('HGET', k, 'conversation_key')
  local conv = P .. 'outbox:conv:' .. ckey
  -- When the conversation's last message went out: the next sender keeps its distance, on any replica.
  if state == 'sent' then redis.call('SET', P .. 'lastsent:' .. ckey, NOW, 'PX', 60000) end
  if open then
    local seq = redis.call('HGET', k, 'seq')
    redis.call('ZADD', P .. 'outbox:open', seq, id)
    redis.call('ZADD', conv, seq, id)
    redis.call('ZREM', P .. 'outbox:finished', id)
    redis.call('PERSIST', k)
  else
    redis.call('ZREM', P .. 'outbox:open', id)
    redis.call('ZREM', conv, id)
    redis.call('ZADD', P .. 'outbox:finished', NOW, id)
    redis.call('EXPIRE', k, OUTBOX_TTL)
  end
  return 1
end

local OPS = {}

local function claim(robot, msg, sid, payload, at, owner)
  local k = inbox_key(robot, msg)
  if redis.call('EXISTS', k) == 1 then return 0 end
  if sid ~= '' and not redis.call('SET', sid_key(robot, sid), msg, 'NX') then return 0 end
  local seq = redis.call('INCR', P .. 'inbox:seq')
  redis.call('HSET', k, 'sid', sid, 'payload', payload, 'received_at', at, 'state', 'received',
    'attempts', 0, 'error', '', 'updated_at', NOW, 'seq', seq, 'owner', owner)
  redis.call('ZADD', P .. 'inbox:' .. robot .. ':open', at, msg)
  redis.call('SADD', P .. 'inbox:robots', robot)
  if owner ~= '' then
    redis.call('ZADD', P .. 'inbox:' .. robot .. ':unrouted:' .. owner, seq, msg)
    redis.call('SADD', P .. 'inbox:' .. robot .. ':owners', owner)
  end
  return 1
end

function OPS.claim()
  return claim(take(), take(), take(), take(), take(), take())
end

function OPS.claims()
  -- Callbacks that arrived together (one batch of the ack path): '1' for each new one, '0' for each known
  -- one, in order. A msgId twice in one batch is new only the first time.
  local robot, at, owner, n = take(), take(), take(), tonumber(take())
  local news = {}
  for i = 1, n do news[i] = tostring(claim(robot, take(), take(), take(), at, owner)) end
  return table.concat(news)
end

function OPS.state()
  local robot, msg, state, err = take(), take(), take(), take()
  set_inbox_state(robot, msg, state, err)
  return 0
end

function OPS.ensure()
  local key, now = take(), take()
  ensure_session(key, now)
  return 0
end

function OPS.usage()
  local key, now = take(), take()
  local k = P .. 'session:' .. key
  ensure_session(key, now)
  for _, name in ipairs(INTS) do
    local v = take()
    if v ~= '0' then redis.call('HINCRBY', k, name, v) end
  end
  local seconds, chunks = take(), take()
  if seconds ~= '0' and seconds ~= '0.0' then redis.call('HINCRBYFLOAT', k, 'agent_seconds', seconds) end
  if chunks ~= '0' then redis.call('HINCRBY', k, 'chunks_sent', chunks) end
  touch_session(key, now)
  local has_last, text, mid, extra = take(), take(), take(), take()
  if has_last == '1' then redis.call('HSET', k, 'last_user_text', text, 'last_user_msg_id', mid) end
  if extra ~= '' then
    -- Numbers accumulate like the other counters; anything else is replaced by the newer value.
    local merged = cjson.decode(redis.call('HGET', k, 'extra'))
    for name, value in pairs(cjson.decode(extra)) do
      if type(value) == 'number' and type(merged[name]) == 'number' then
        merged[name] = merged[name] + value
      else
        merged[name] = value
      end
    end
    redis.call('HSET', k, 'extra', cjson.encode(merged))
  end
  return 0
end

function OPS.turns()
  local key, n = take(), tonumber(take())
  local hk = P .. 'history:' .. key
  for _ = 1, n do redis.call('RPUSH', hk, take()) end
  return 0
end

function OPS.chunks()
  local n = tonumber(take())
  for _ = 1, n do
    local reply, idx, total, conv, sess = take(), take(), take(), take(), take()
    local route, text, mention, title, created, attempts = take(), take(), take(), take(), take(), take()
    local id = reply .. ':' .. idx
    local k = chunk_key(id)
    -- A repeated add of the same reply (a retry after an error) must not make a chunk go out twice.
    if redis.call('EXISTS', k) == 0 then
      local seq = redis.call('INCR', P .. 'outbox:seq')
      redis.call('HSET', k, 'reply_id', reply, 'idx', idx, 'total', total, 'conversation_key', conv,
        'session_key', sess, 'route', route, 'text', text, 'mention', mention, 'title', title,
        'state', 'pending', 'created_at', created, 'attempts', attempts, 'error', '', 'updated_at', NOW,
        'seq', seq)
      redis.call('ZADD', P .. 'outbox:open', seq, id)
      redis.call('ZADD', P .. 'outbox:conv:' .. conv, seq, id)
    end
  end
  return 0
end

function OPS.owned()
  -- The rest of the list runs only while the inbox entry is still this replica's (or nobody's).
  local robot, msg, me = take(), take(), take()
  local owner = redis.call('HGET', inbox_key(robot, msg), 'owner')
  if owner and owner ~= '' and owner ~= me then
    pos = #ARGV + 1
    return -1
  end
  return 0
end

function OPS.mark()
  local id, state, err = take(), take(), take()
  return set_chunk_state(id, state, err)
end

function OPS.cancel()
  local conv, reply = take(), take()
  local count = 0
  for _, id in ipairs(redis.call('ZRANGE', P .. 'outbox:conv:' .. conv, 0, -1)) do
    if reply == '' or redis.call('HGET', chunk_key(id), 'reply_id') == reply then
      count = count + set_chunk_state(id, 'cancelled', '')
    end
  end
  return count
end

function OPS.reset()
  local key, now = take(), take()
  redis.call('DEL', P .. 'history:' .. key, P .. 'session:' .. key)
  ensure_session(key, now)
  return 0
end

function OPS.pop()
  -- Walk back over the answer (whatever is not the user's) to the user turn that asked it.
  local hk = P .. 'history:' .. take()
  local turns = redis.call('LRANGE', hk, 0, -1)
  for i = #turns, 1, -1 do
    if cjson.decode(turns[i])[1] == 'user' then
      if i == 1 then redis.call('DEL', hk) else redis.call('LTRIM', hk, 0, i - 2) end
      return turns[i]
    end
  end
  return ''
end
"""

APPLY = (
    _LIB
    + r"""
local memo = P .. 'op:' .. TOKEN
if TOKEN ~= '' then
  local done = redis.call('GET', memo)
  if done then return done end
end
local result = 0
while pos <= #ARGV do result = OPS[take()]() end
if TOKEN ~= '' then redis.call('SET', memo, result, 'EX', """
    + str(OP_MEMO_S)
    + r""") end
return result
"""
)

SWEEP = r"""
-- ARGV: prefix, what (inbox | outbox | sessions), horizon (exclusive), batch size.
-- Returns {deleted, examined}: the caller runs it again while examined == batch size.
local P, what, horizon, limit = ARGV[1], ARGV[2], '(' .. ARGV[3], tonumber(ARGV[4])
local deleted, examined = 0, 0
local function sweep(index, each)
  local ids = redis.call('ZRANGEBYSCORE', index, '-inf', horizon, 'LIMIT', 0, limit - examined)
  for _, id in ipairs(ids) do
    deleted = deleted + each(id)
    redis.call('ZREM', index, id)
  end
  examined = examined + #ids
end
if what == 'inbox' then
  for _, robot in ipairs(redis.call('SMEMBERS', P .. 'inbox:robots')) do
    if examined < limit then
      sweep(P .. 'inbox:' .. robot .. ':finished', function(msg)
        local k = P .. 'inbox:' .. robot .. ':msg:' .. msg
        local sid = redis.call('HGET', k, 'sid')
        if sid and sid ~= '' then redis.call('DEL', P .. 'inbox:' .. robot .. ':sid:' .. sid) end
        return redis.call('DEL', k)
      end)
    end
  end
elseif what == 'outbox' then
  sweep(P .. 'outbox:finished', function(id) return redis.call('DEL', P .. 'outbox:chunk:' .. id) end)
else
  sweep(P .. 'sessions', function(key)
    redis.call('DEL', P .. 'history:' .. key)
    return redis.call('DEL', P .. 'session:' .. key)
  end)
end
return {deleted, examined}
"""

PENDING = r"""
-- KEYS: a conversation's unsent chunks (sorted set of chunk ids). ARGV: the chunk key prefix.
-- Every one's hash (flat field/value lists), in send order: one round trip for the delivery's read.
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local h = redis.call('HGETALL', ARGV[1] .. id)
  if #h > 0 then table.insert(out, h) end
end
return out
"""

SCHEDULE_CLAIM = r"""
-- KEYS: the schedule's hash, the set of schedule names. ARGV: name, slot, outcome, now, token.
-- Advances the schedule to slot when slot is later than the recorded one: 1 when this run did (or a retry
-- of the run that did: same token and slot), else 0. One replica wins each slot.
local k, name, slot, outcome, now, token = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cur = redis.call('HMGET', k, 'slot', 'token')
if cur[1] then
  if cur[1] == slot and cur[2] == token then return 1 end
  if tonumber(cur[1]) >= tonumber(slot) then return 0 end
end
redis.call('HSET', k, 'slot', slot, 'outcome', outcome, 'at', now, 'token', token)
if outcome == 'fired' then redis.call('HSET', k, 'fired_slot', slot, 'fired_at', now) end
redis.call('SADD', KEYS[2], name)
return 1
"""
