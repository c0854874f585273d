"""The Lua scripts of :class:`~edgecrab.store.redis_coord.RedisCoordination`: each is one atomic step of the
replicas' coordination (docs/redis.md lists the keys). A replica is alive while ``P replica:<id>`` exists;
every lease names the replica holding it, and a lease whose replica is gone counts as free.
"""

from __future__ import annotations

# KEYS: queue, lease. ARGV: entry (``<replica>|<msgId>``), ``|<msgId>``, the robot's inbox key prefix
# (``P inbox:<robot>:``), msgId, replica-key prefix, replica, and the most messages the queue may hold for
# this one to join it (``''``: any number). The session's queue is in arrival order (the inbox's ``seq``,
# the order of the claims), whichever replica enqueues first; never ahead of a head that holds the
# session's lease (it is running). A message taken over from a dead replica takes that replica's place
# (same msgId) in the queue. Returns {messages in the queue before, 1 if enqueued}: the busy policy's
# count and its decision in one step (the message is routed either way: a rejected one never runs).
ENQUEUE = """
local queue, entry, suffix, inbox = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
redis.call('ZREM', inbox .. 'unrouted:' .. ARGV[6], ARGV[4])
local list = redis.call('LRANGE', queue, 0, -1)
local most = tonumber(ARGV[7] or '')
if most and #list > most then return {#list, 0} end
for i, e in ipairs(list) do
  if e == entry then return {#list, 1} end
  if string.sub(e, -#suffix) == suffix then
    redis.call('LSET', queue, i - 1, entry)
    return {#list, 1}
  end
end
local function seq(e)
  local s = redis.call('HGET', inbox .. 'msg:' .. (string.match(e, '|([^|]*)$') or ''), 'seq')
  return tonumber(s or '0') or 0
end
local holder = redis.call('GET', KEYS[2])
local first = 1
if holder and redis.call('EXISTS', ARGV[5] .. holder) == 1 then first = 2 end
local pos = #list
local mine = redis.call('HGET', inbox .. 'msg:' .. ARGV[4], 'seq')
if mine then
  mine = tonumber(mine)
  while pos >= first and seq(list[pos]) > mine do pos = pos - 1 end
end
if pos == #list then
  redis.call('RPUSH', queue, entry)
elseif pos == 0 then
  redis.call('LPUSH', queue, entry)
else
  redis.call('LINSERT', queue, 'AFTER', list[pos], entry)
end
return {#list, 1}
"""

# KEYS: queue, lease. ARGV: entry, replica, lease ms, replica-key prefix, the robot's inbox key prefix,
# msgId. {1}: acquired; {2}: skipped a dead replica's finished head (ask again); {3, msgId}: another
# message of this replica's heads the queue (run it first); {0}: wait. A dead replica's unfinished
# message is waited for: a live replica takes it over (failover) in its place. So is any message claimed
# before this one that is not in its session's queue yet (``unrouted``: its session is known once it is
# read; milliseconds, or until a dead replica's messages are taken over and read again), so that no
# conversation's answers overtake an earlier message.
ACQUIRE = """
local inbox, me = ARGV[5], ARGV[2]
if not redis.call('LPOS', KEYS[1], ARGV[1]) then redis.call('RPUSH', KEYS[1], ARGV[1]) end
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= me and redis.call('EXISTS', ARGV[4] .. holder) == 1 then return {0} end
local mine = tonumber(redis.call('HGET', inbox .. 'msg:' .. ARGV[6], 'seq') or '0') or 0
for _, owner in ipairs(redis.call('SMEMBERS', inbox .. 'owners')) do
  local oldest = redis.call('ZRANGE', inbox .. 'unrouted:' .. owner, 0, 0, 'WITHSCORES')
  if #oldest == 0 then
    if redis.call('EXISTS', ARGV[4] .. owner) == 0 then redis.call('SREM', inbox .. 'owners', owner) end
  elseif tonumber(oldest[2]) < mine then
    return {0}
  end
end
local head = redis.call('LINDEX', KEYS[1], 0)
if head == ARGV[1] then
  redis.call('SET', KEYS[2], me, 'PX', ARGV[3])
  redis.call('SET', ARGV[4] .. me, '1', 'PX', ARGV[3])  -- a lease holder looks alive (see TAKE_DELIVERY)
  return {1}
end
local owner, id = string.match(head, '^(.*)|([^|]*)$')
if owner == me then return {3, id} end
if owner and redis.call('EXISTS', ARGV[4] .. owner) == 0 then
  local state = redis.call('HGET', inbox .. 'msg:' .. id, 'state')
  if state == 'received' or state == 'processing' then return {0} end
  redis.call('LPOP', KEYS[1])
  return {2}
end
return {0}
"""

# KEYS: queue, lease. ARGV: entry, replica, signals channel, the ``free`` signal. The signal goes out only
# when messages still wait in the queue (a waiter's entry is in it from its enqueue on): an idle session's
# release wakes no replica.
RELEASE = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
local waiting = redis.call('LLEN', KEYS[1])
if waiting > 0 then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
return waiting
"""

# KEYS: the replica key, then the leases held. ARGV: replica, lease ms.
RENEW = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return 1
"""

# KEYS: the conversation's delivery lease. ARGV: replica, lease ms, replica-key prefix. 1: taken.
TAKE_DELIVERY = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[3] .. holder) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
-- A lease is never held by a replica that does not look alive (one starting sends before its first
-- heartbeat): else another replica would find the lease free and send the same chunks.
redis.call('SET', ARGV[3] .. ARGV[1], '1', 'PX', ARGV[2])
return 1
"""

# KEYS: the delivery lease, the chunk's hash, the conversation's last-send time. ARGV: replica, lease ms,
# replica-key prefix, now (s), the chunk interval (s), this process's life (the replica and a token made at
# its start: a replica restarted under the same id is another life). Marks the chunk ``sending`` by this
# life just before it goes out, unless that would send it twice: {0}: send it; {4, wait s}: ask again in
# ``wait`` seconds (the conversation's last message, from any replica, went out less than an interval ago);
# {1}: another replica, or an earlier life of this one, was sending it (it stopped: on the wire, DingTalk
# may have it); {2}: finished meanwhile (sent, cancelled by /stop on any replica, given up): skip it;
# {3}: another live replica holds the lease now (this one's lapsed): stop sending.
START_SEND = """
local me = ARGV[1]
local holder = redis.call('GET', KEYS[1])
if holder ~= me then
  if holder and redis.call('EXISTS', ARGV[3] .. holder) == 1 then return {3, '0'} end
  redis.call('SET', KEYS[1], me, 'PX', ARGV[2])
end
redis.call('SET', ARGV[3] .. me, '1', 'PX', ARGV[2])
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'sending' and redis.call('HGET', KEYS[2], 'sender') ~= ARGV[6] then return {1, '0'} end
if state ~= 'pending' and state ~= 'sending' then return {2, '0'} end
local last = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local wait = tonumber(ARGV[5]) - (tonumber(ARGV[4]) - last)
if wait > 0 then
  if wait > tonumber(ARGV[5]) then wait = tonumber(ARGV[5]) end
  return {4, tostring(wait)}
end
redis.call('HSET', KEYS[2], 'state', 'sending', 'sender', ARGV[6], 'updated_at', ARGV[4])
redis.call('HINCRBY', KEYS[2], 'attempts', 1)
return {0, '0'}
"""

# KEYS: the delivery lease, the conversation's unsent chunks (sorted set). ARGV: replica, lease ms,
# finished ('1': keep the lease if chunks are unsent). 1: released (or not ours); 0: kept, send the rest.
GIVE_DELIVERY_BACK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 1 end
if ARGV[3] == '1' and redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# ARGV: prefix, robot, replica, starting ('1'), how many to look at. Returns the msgIds this replica
# took over: unfinished, and owned by no live replica (or, starting, by this replica's id in an earlier life).
ADOPT = """
local P, robot, me, starting = ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1'
local taken, gone = {}, {}
-- One look per owner, not per message: a sweep of thousands of open messages holds Redis a third as long.
local function dead(owner)
  if gone[owner] == nil then gone[owner] = redis.call('EXISTS', P .. 'replica:' .. owner) == 0 end
  return gone[owner]
end
for _, msg in ipairs(redis.call('ZRANGE', P .. 'inbox:' .. robot .. ':open', 0, tonumber(ARGV[5]) - 1)) do
  local k = P .. 'inbox:' .. robot .. ':msg:' .. msg
  local found = redis.call('HMGET', k, 'state', 'owner')
  local state, owner = found[1], found[2]
  if state == 'received' or state == 'processing' then
    local take = (not owner) or owner == ''
    if owner == me then take = starting
    elseif not take then take = dead(owner) end
    if take then
      local unrouted = P .. 'inbox:' .. robot .. ':unrouted:'
      if owner and owner ~= '' then redis.call('ZREM', unrouted .. owner, msg) end
      redis.call('HSET', k, 'owner', me)
      redis.call('ZADD', unrouted .. me, redis.call('HGET', k, 'seq'), msg)
      redis.call('SADD', P .. 'inbox:' .. robot .. ':owners', me)
      table.insert(taken, msg)
    end
  end
end
return taken
"""

# ARGV: prefix, how many unsent chunks to look at. Returns the conversations with unsent chunks whose
# delivery lease is free or held by a dead replica.
ORPHANS = """
local P, limit = ARGV[1], tonumber(ARGV[2])
local seen, out = {}, {}
for _, id in ipairs(redis.call('ZRANGE', P .. 'outbox:open', 0, limit - 1)) do
  local conv = redis.call('HGET', P .. 'outbox:chunk:' .. id, 'conversation_key')
  if conv and not seen[conv] then
    seen[conv] = true
    local holder = redis.call('GET', P .. 'deliver:' .. conv)
    if (not holder) or redis.call('EXISTS', P .. 'replica:' .. holder) == 0 then table.insert(out, conv) end
  end
end
return out
"""
