"""Atomic job state changes: record update and event append in one Lua script each.

Terminal states never change: every script checks the current status first, so a late progress
write, a duplicate finish from a job that ran twice, or a cancel racing a success cannot overwrite
the outcome. Used by the worker (sync client) and the gateway (async client) alike; the scripts
are registered on whichever client the caller has.
"""

from __future__ import annotations

from sdserve.events import STREAM_MAXLEN

# KEYS: job hash, events stream. ARGV: now, worker, event data.
# Returns 'ok', or the status that forbids starting ('missing', 'canceled', ...).
START = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[2], 'step', '0')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', {STREAM_MAXLEN}, '*', 'event', 'started', 'data', ARGV[3])
return 'ok'
"""

# KEYS: job hash, events stream. ARGV: step, total, event data ('' = record only, no event).
# Returns 'ok' to go on, 'cancel' when a cancel was asked for, or the status if no longer running.
PROGRESS = f"""
local s = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested')
if not s[1] then return 'missing' end
if s[1] ~= 'running' then return s[1] end
if s[2] == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'step', ARGV[1], 'total', ARGV[2])
if ARGV[3] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', {STREAM_MAXLEN}, '*', 'event', 'progress', 'data', ARGV[3])
end
return 'ok'
"""

# KEYS: job hash, events stream. ARGV: new terminal status, event data, then field/value pairs.
# Returns 'ok', or the terminal status the job already had.
FINISH = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'canceled' then return status end
redis.call('HSET', KEYS[1], 'status', ARGV[1])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', {STREAM_MAXLEN}, '*', 'event', ARGV[1], 'data', ARGV[2])
return 'ok'
"""
