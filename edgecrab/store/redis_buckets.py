"""Rate-limit buckets shared by every replica (:class:`~edgecrab.dingtalk.ratelimit.Buckets`): DingTalk
limits each app per API (and card calls per app), whichever replica makes the call.

One key per bucket, ``P rate:<app>:<api>``, holding the bucket's *theoretical arrival time* (GCRA, the
token bucket written as one number): a call reserves the next slot, ``1 / rate`` after the last one
(``burst`` slots may be taken at once), and is told how long to wait for it, like the in-process
:class:`~edgecrab.dingtalk.ratelimit.RateLimiter`. The script reads Redis's clock (``TIME``), so replicas
whose clocks differ still share one timeline. The key expires once the bucket is full again.
"""

from __future__ import annotations

from typing import Any

# KEYS: the bucket. ARGV: rate (per second), burst. Returns the wait in seconds, as text (Lua numbers
# returned to Redis are truncated to integers).
RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = 1 / tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait < 0 then wait = 0 end
local after = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', after), 'PX', math.ceil((after - now) * 1000) + 1000)
return string.format('%.6f', wait)
"""


async def reserve(script: Any, key: str, rate: float, burst: float) -> float:
    """Run :data:`RESERVE` (``script``: a function that runs a script: source, keys, args)."""
    return float(await script(RESERVE, [key], [repr(float(rate)), repr(float(burst))]))
