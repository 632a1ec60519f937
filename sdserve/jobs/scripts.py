"""Every change of a job record is one Lua script: atomic, fenced, and on the server's clock.

* **Atomic.** A script changes the record, appends the event and enqueues the webhook delivery in one step,
  so no event happens without its delivery being recorded (the dispatcher sends them).
* **Terminal states never change.** Every script checks the current status first: a late progress write, a
  duplicate finish or a cancel racing a success cannot overwrite the outcome.
* **Fenced.** ``START`` returns the attempt number (the run's fencing token); every later write of that run
  (progress, finish) names it, and a script refuses a write whose attempt is not the record's current one
  (``superseded``): a worker that stalled while the janitor gave its job to another cannot touch the rerun.
* **One clock.** Times come from ``TIME`` inside the script (Redis's clock), never from the caller, so
  processes whose clocks disagree still agree on every deadline.
* **One vocabulary.** Statuses and event names are formatted in from ``sdserve.contract.lifecycle``; every key
  comes in through ``KEYS`` (or, for delivery hashes, a prefix from ``sdserve.keys`` in ``ARGV``).
"""

from __future__ import annotations

from string import Template

from sdserve.contract.lifecycle import JobEvent, JobStatus

STREAM_MAXLEN = 2000
"""Approximate cap on one job's event stream (a 150-step job with previews stays far below it)."""

PROGRESS_WEBHOOK_INTERVAL = 1.0
"""Progress webhooks are throttled to one per second per job (best effort, never retried)."""

NOW_TOKEN = "\x00now"  # noqa: S105 - a placeholder, not a secret
"""An ``APPLY`` argument equal to this is replaced by the server's time (``TIME``) when the script runs."""


def _lua(source: str) -> str:
    names = {f"S_{s.name}": s.value for s in JobStatus} | {f"E_{e.name}": e.value for e in JobEvent}
    return Template(source).substitute(names, MAXLEN=STREAM_MAXLEN, PROGRESS_EVERY=PROGRESS_WEBHOOK_INTERVAL)


# Shared helpers. KEYS[1] job hash, KEYS[2] events stream, KEYS[3] webhook due-set, KEYS[4] running set,
# KEYS[5] the owner's active set; ARGV[1] delivery hash prefix, ARGV[2] delivery TTL (seconds).
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local nowtext = string.format('%.6f', now)
local delivery_prefix, delivery_ttl = ARGV[1], tonumber(ARGV[2])
local function terminal(status)
  return status == '$S_SUCCEEDED' or status == '$S_FAILED' or status == '$S_CANCELED'
end
local function settle()  -- the job has ended: it no longer counts against its owner, nor as running
  local job = redis.call('HGET', KEYS[1], 'id')
  redis.call('SREM', KEYS[5], job)
  redis.call('ZREM', KEYS[4], job)
end
local function emit(event, data)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', $MAXLEN, '*', 'event', event, 'data', data)
  local events = redis.call('HGET', KEYS[1], 'webhook_events')
  if not events then return end
  if not string.find(events, '"' .. event .. '"', 1, true) then return end
  local job = redis.call('HGET', KEYS[1], 'id')
  local id
  if event == '$E_PROGRESS' then
    local last = tonumber(redis.call('HGET', KEYS[1], 'webhook_progress_at') or '0')
    if now - last < $PROGRESS_EVERY then return end
    redis.call('HSET', KEYS[1], 'webhook_progress_at', nowtext)
    id = job .. '.progress.' .. (redis.call('HGET', KEYS[1], 'attempts') or '0') .. '.'
      .. (redis.call('HGET', KEYS[1], 'step') or '0')
  elseif event == '$E_STARTED' then
    id = job .. '.started.' .. (redis.call('HGET', KEYS[1], 'attempts') or '1')
  else
    id = job .. '.' .. event
  end
  local key = delivery_prefix .. id
  if redis.call('EXISTS', key) == 1 then return end
  redis.call('HSET', key, 'id', id, 'job', job, 'event', event, 'webhook_id', 'msg_' .. id,
             'attempt', '0', 'created_at', nowtext, 'data', data)
  redis.call('EXPIRE', key, delivery_ttl)
  redis.call('ZADD', KEYS[3], now, id)
end
local function finish(status, event, data)
  redis.call('HSET', KEYS[1], 'status', status, 'finished_at', nowtext)
  settle()
  emit(event, data)
end
"""

START = _lua(
    _PRELUDE
    + """
-- KEYS[6] the claimed list it was taken into, KEYS[7] the paused set, KEYS[8] its queue, KEYS[9] its bell.
-- ARGV[3] worker, ARGV[4] queue name, ARGV[5] started event data (JSON; the attempt is added), ARGV[6] the
-- canceled problem (JSON). Returns {'ok', attempt, started_at (Redis's clock)}, or {why not}: 'missing',
-- 'paused', 'canceled', a status.
local id = redis.call('HGET', KEYS[1], 'id')
local s = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempts', 'cancel_requested', 'started_at')
if not s[1] then
  return {'missing'}
end
if s[1] == '$S_RUNNING' and s[2] == ARGV[3] then  -- this worker's own start, retried after a lost reply
  return {'ok', tonumber(s[3]), s[5]}
end
if s[1] ~= '$S_QUEUED' then
  redis.call('LREM', KEYS[6], 0, id)
  return {s[1]}
end
if redis.call('SISMEMBER', KEYS[7], ARGV[4]) == 1 then  -- paused after it was taken: back to the front
  if redis.call('LREM', KEYS[6], 0, id) > 0 then redis.call('LPUSH', KEYS[8], id) end
  return {'paused'}
end
redis.call('LREM', KEYS[6], 0, id)
if s[4] == '1' then  -- requeued after its worker died, with a cancel pending
  redis.call('HSET', KEYS[1], 'error', ARGV[6])
  finish('$S_CANCELED', '$E_CANCELED', '{"status":"$S_CANCELED"}')
  return {'$S_CANCELED'}
end
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', '$S_RUNNING', 'started_at', nowtext, 'worker', ARGV[3], 'step', '0',
           'progress', '{}')
redis.call('ZADD', KEYS[4], now, id)
local data = cjson.decode(ARGV[5])
data['attempt'] = attempt
emit('$E_STARTED', cjson.encode(data))
return {'ok', attempt, nowtext}
"""
)

PROGRESS = _lua(
    _PRELUDE
    + """
-- ARGV[3] attempt, ARGV[4] step, ARGV[5] total, ARGV[6] progress facts (JSON, '' = unchanged),
-- ARGV[7] event data ('' = record only, no event).
-- Returns 'ok' to go on; 'cancel' when a cancel was asked for; 'superseded' when another attempt owns the
-- job now; or the status, when the job is no longer running ('missing' when the record is gone).
local s = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'attempts')
if not s[1] then return 'missing' end
if s[3] ~= ARGV[3] then return 'superseded' end
if s[1] ~= '$S_RUNNING' then return s[1] end
if s[2] == '1' then return 'cancel' end
redis.call('HSET', KEYS[1], 'step', ARGV[4], 'total', ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'progress', ARGV[6]) end
if ARGV[7] ~= '' then emit('$E_PROGRESS', ARGV[7]) end
return 'ok'
"""
)

FINISH = _lua(
    _PRELUDE
    + """
-- ARGV[3] attempt ('' = whichever is current), ARGV[4] the terminal status, ARGV[5] event data, ARGV[6] the
-- finishing worker ('' for the janitor and the gateway), then field/value pairs to set. Returns 'ok';
-- 'cancel' when a success meets a pending cancel request (the caller cancels instead); 'superseded' when
-- another attempt owns the job; or the terminal status it already had.
local s = redis.call('HMGET', KEYS[1], 'status', 'cancel_requested', 'attempts')
if not s[1] then return 'missing' end
if ARGV[3] ~= '' and s[3] ~= ARGV[3] then return 'superseded' end
if terminal(s[1]) then
  if s[1] == ARGV[4] and ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'worker') == ARGV[6] then
    return 'ok'  -- this very finish, retried after its reply was lost
  end
  return s[1]
end
if ARGV[4] == '$S_SUCCEEDED' and s[2] == '1' then return 'cancel' end
for i = 7, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
finish(ARGV[4], ARGV[4], ARGV[5])
return 'ok'
"""
)

CANCEL = _lua(
    _PRELUDE
    + """
-- KEYS[6] the job's queue, KEYS[7] its claimed list. ARGV[3] the canceled problem (JSON).
-- A queued job is canceled at once (and leaves its queue); a running one gets a cancel request that its
-- worker sees at its next step. Returns 'canceled' (it ended now), 'requested', or 'ended' (it had ended before:
-- even canceled, so that only the call that canceled it reads 'canceled' and counts it).
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if terminal(status) then return 'ended' end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
if status == '$S_QUEUED' then
  local id = redis.call('HGET', KEYS[1], 'id')
  redis.call('LREM', KEYS[6], 0, id)
  redis.call('LREM', KEYS[7], 0, id)
  redis.call('HSET', KEYS[1], 'error', ARGV[3])
  finish('$S_CANCELED', '$E_CANCELED', '{"status":"$S_CANCELED"}')
  return 'canceled'
end
return 'requested'
"""
)

REDELIVER = _lua(
    _PRELUDE
    + """
-- Queue a job's terminal event again under a new webhook id (the same writer and TTL as the original).
-- Returns the delivery id, or '' when the job has not ended or has no webhook.
local s = redis.call('HMGET', KEYS[1], 'status', 'webhook_url', 'id')
if not terminal(s[1]) or not s[2] then return '' end
local n = redis.call('HINCRBY', KEYS[1], 'redeliveries', 1)
local id = s[3] .. '.' .. s[1] .. '.r' .. n
redis.call('HSET', delivery_prefix .. id, 'id', id, 'job', s[3], 'event', s[1], 'webhook_id', 'msg_' .. id,
           'attempt', '0', 'created_at', nowtext, 'data', cjson.encode({status = s[1], redelivery = n}))
redis.call('EXPIRE', delivery_prefix .. id, delivery_ttl)
redis.call('ZADD', KEYS[3], now, id)
return id
"""
)

REQUEUE = _lua(
    """
-- The janitor gives back a running job whose worker is gone. KEYS: job, events, running set, its queue, its
-- claimed list, its bell. ARGV: the worker and attempt it expects (so it never races the worker's own
-- finish, nor a rerun), the queued event data. Returns 1 when requeued.
local s = redis.call('HMGET', KEYS[1], 'status', 'worker', 'attempts', 'id')
if s[1] ~= '$S_RUNNING' or s[2] ~= ARGV[1] or s[3] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'status', '$S_QUEUED', 'step', '0', 'progress', '{}')
redis.call('ZREM', KEYS[3], s[4])
redis.call('LREM', KEYS[5], 0, s[4])
redis.call('LPUSH', KEYS[4], s[4])
redis.call('LPUSH', KEYS[6], '1')
redis.call('LTRIM', KEYS[6], 0, 0)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', $MAXLEN, '*', 'event', '$E_QUEUED', 'data', ARGV[3])
return 1
"""
)

UNCLAIM = _lua(
    """
-- The janitor gives back a job a worker took but never started (it died in between). KEYS: job, its claimed
-- list, its queue, its bell. Returns 1 when the job went back to the front of its queue.
local status = redis.call('HGET', KEYS[1], 'status')
local id = ARGV[1]
if status ~= '$S_QUEUED' then
  redis.call('LREM', KEYS[2], 0, id)  -- started, ended or expired: nothing to give back
  return 0
end
if redis.call('LREM', KEYS[2], 0, id) == 0 then return 0 end
redis.call('LPUSH', KEYS[3], id)
redis.call('LPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], 0, 0)
return 1
"""
)

POP = _lua(
    """
-- A worker takes the oldest job across the queues it serves. KEYS[1] the paused set, then per queue its
-- list, its claimed list and its bell. ARGV[1] the job hash prefix, ARGV[2] the number of queues, then per
-- queue its name and its priority (0 first). Paused queues are skipped; among the heads of the others the
-- best priority, then the oldest job (created_at, the server's time at acceptance) wins; it moves to its
-- claimed list (the janitor gives it back if the worker dies before starting it). Queues that still hold
-- jobs get their bell rung, so another idle worker wakes. Returns {queue name, job id} or {}.
local n = tonumber(ARGV[2])
local best, best_prio, best_age, best_head
for i = 1, n do
  local name, prio = ARGV[1 + 2 * i], tonumber(ARGV[2 + 2 * i])
  if redis.call('SISMEMBER', KEYS[1], name) == 0 then
    local head = redis.call('LINDEX', KEYS[3 * i - 1], 0)
    if head then
      local age = tonumber(redis.call('HGET', ARGV[1] .. head, 'created_at') or '0')
      if not best or prio < best_prio or (prio == best_prio and age < best_age) then
        best, best_prio, best_age, best_head = i, prio, age, head
      end
    end
  end
end
local taken = {}
if best then
  local id = redis.call('LMOVE', KEYS[3 * best - 1], KEYS[3 * best], 'LEFT', 'RIGHT')
  taken = {ARGV[1 + 2 * best], id}
end
for i = 1, n do
  if redis.call('SISMEMBER', KEYS[1], ARGV[1 + 2 * i]) == 0 and redis.call('LLEN', KEYS[3 * i - 1]) > 0 then
    redis.call('LPUSH', KEYS[3 * i + 1], '1')
    redis.call('LTRIM', KEYS[3 * i + 1], 0, 0)
  end
end
return taken
"""
)

APPLY = _lua(
    """
-- Accept jobs: ARGV holds, per job, its command count, then per command its argument count and arguments.
-- An argument equal to the NOW token becomes the server's time. A job's commands stop at its first error
-- (its queue push comes last, so a job whose writes failed is never queued); other jobs are not affected.
-- A job's first command writes its record: a job whose record exists already (this call is a retry of one
-- whose reply was lost) is not written again, and answers 'replayed'.
-- Returns the time used, then one reply per command.
local t = redis.call('TIME')
local nowtext = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
local out, i = {nowtext}, 1
while i <= #ARGV do
  local count, failed = tonumber(ARGV[i]), false
  i = i + 1
  if redis.call('EXISTS', ARGV[i + 2]) == 1 then
    out[#out + 1] = 'replayed'
    failed = true
    i = i + tonumber(ARGV[i]) + 1
    count = count - 1
  end
  for _ = 1, count do
    local n = tonumber(ARGV[i])
    if failed then
      out[#out + 1] = false
    else
      local args = {}
      for j = 1, n do
        local a = ARGV[i + j]
        if a == '\\0now' then a = nowtext end
        args[j] = a
      end
      local reply = redis.pcall(unpack(args))
      failed = type(reply) == 'table' and reply.err ~= nil
      out[#out + 1] = reply
    end
    i = i + n + 1
  end
end
return out
"""
)
