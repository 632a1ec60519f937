"""Atomic job state changes: record update, event append and webhook enqueue, in one Lua script each.

Terminal states never change: every script checks the current status first, so a late progress
write, a duplicate finish from a job that ran twice, or a cancel racing a success cannot overwrite
the outcome. A job with a webhook gets its deliveries enqueued by the same script that changes its
state, so no event can happen without its delivery being recorded (the dispatcher sends them).

Every script takes ``KEYS = [job hash, events stream, webhook due-set]`` and, first in ``ARGV``,
``now`` (Unix seconds) and the key prefix of delivery hashes. Used by the worker (sync client) and
the gateway (async client) alike.
"""

from __future__ import annotations

from sdserve.events import STREAM_MAXLEN

PROGRESS_WEBHOOK_INTERVAL = 1.0
"""Progress webhooks are throttled to one per second per job (best effort, never retried)."""

_PRELUDE = f"""
local now = tonumber(ARGV[1])
local delivery_prefix = ARGV[2]
local base = string.sub(delivery_prefix, 1, #delivery_prefix - #'delivery:')
local function settle()  -- the job has ended: it no longer counts against its owner, nor as running
  local job = redis.call('HGET', KEYS[1], 'id')
  redis.call('SREM', base .. 'active:' .. (redis.call('HGET', KEYS[1], 'owner') or 'anonymous'), job)
  redis.call('ZREM', base .. 'running', job)
end
local function emit(event, data)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', {STREAM_MAXLEN}, '*', 'event', event, 'data', data)
  local events = redis.call('HGET', KEYS[1], 'webhook_events')
  if not events then return end
  if not string.find(',' .. events .. ',', ',' .. event .. ',', 1, true) then return end
  local job = redis.call('HGET', KEYS[1], 'id')
  local id
  if event == 'progress' then
    local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0')
    if now - last < {PROGRESS_WEBHOOK_INTERVAL} then return end
    redis.call('HSET', KEYS[1], 'webhook_progress_at', now)
    id = job .. '.progress.' .. (redis.call('HGET', KEYS[1], 'step') or '0')
  elseif event == 'started' then
    id = job .. '.started.' .. (redis.call('HGET', KEYS[1], 'attempts') or '1')
  else
    id = job .. '.' .. event
  end
  local key = delivery_prefix .. id
  if redis.call('EXISTS', key) == 1 then return end
  redis.call('HSET', key, 'id', id, 'job', job, 'event', event, 'webhook_id', 'msg_' .. id,
             'attempt', '0', 'created_at', now, 'data', data)
  redis.call('EXPIRE', key, 7 * 86400)
  redis.call('ZADD', KEYS[3], now, id)
end
"""

# ARGV: now, delivery prefix, worker, event data.
# Returns 'ok', 'cancel', or the status that forbids starting ('missing', 'canceled', ...).
START = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status ~= 'queued' and status ~= 'running' then return status end
if redis.call('HGET', KEYS[1], 'cancel_requested') == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1], 'worker', ARGV[3], 'step', '0')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('ZADD', base .. 'running', now, redis.call('HGET', KEYS[1], 'id'))
emit('started', ARGV[4])
return 'ok'
"""
)

# ARGV: now, delivery prefix, step, total, event data ('' = record only, no event).
# Returns 'ok' to go on, 'cancel' when a cancel was asked for, or the status if no longer running.
PROGRESS = (
    _PRELUDE
    + """
local s = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested')
if not s[1] then return 'missing' end
if s[1] ~= 'running' then return s[1] end
if s[2] == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'step', ARGV[3], 'total', ARGV[4])
if ARGV[5] ~= '' then emit('progress', ARGV[5]) end
return 'ok'
"""
)

# ARGV: now, delivery prefix, new terminal status, event data, then field/value pairs.
# Returns 'ok'; 'cancel' when a success meets a pending cancel request (the caller cancels instead);
# or the terminal status the job already had.
FINISH = (
    _PRELUDE
    + """
local s = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested')
if not s[1] then return 'missing' end
if s[1] == 'succeeded' or s[1] == 'failed' or s[1] == 'canceled' then return s[1] end
if ARGV[3] == 'succeeded' and s[2] == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'finished_at', ARGV[1])
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
settle()
emit(ARGV[3], ARGV[4])
return 'ok'
"""
)

# KEYS: job hash, events stream, webhook due-set, the RQ queue list of the job's model.
# ARGV: now, delivery prefix, event data.
# A queued job is canceled at once (and leaves the queue); a running one gets a cancel request that
# the worker sees at its next step. Returns 'canceled', 'requested', or the terminal status it had.
CANCEL = (
    _PRELUDE
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'succeeded' or status == 'failed' or status == 'canceled' then return status end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if status == 'queued' then
  redis.call('LREM', KEYS[4], 0, redis.call('HGET', KEYS[1], 'id'))
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'finished_at', ARGV[1])
  settle()
  emit('canceled', ARGV[3])
  return 'canceled'
end
return 'requested'
"""
)
