-- lib.lua: the steps shared by every script. queue/scripts.py prepends a generated preamble
-- (from keys.SCRIPT_KEYS and records.py) to it and to each script body:
--   K.<name>         KEYS[i] named as in keys.py (K.owned and K.lease: the calling worker's)
--   FIRST_EXTRA_KEY  index of the first script-specific key (reap.lua's lease/owned pairs)
--   CODE.<NAME>      report codes (records.ReportCode)
--   MAX_PRIORITY, EVENTS_MAXLEN
-- so the key order, codes and constants are written once, in Python.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- type:priority:min_dram_gb:min_cpu:params -> priority, dram, cpu
local function task_fields(task)
  local _, _, prio, dram, cpu = string.find(task, '^[^:]*:([^:]*):([^:]*):([^:]*):')
  return tonumber(prio) or 0, tonumber(dram) or 0, tonumber(cpu) or 0
end

-- Scores reach 2^52; format them ourselves, Lua's default number formatting keeps 14 digits.
local function score(prio, seq)
  return string.format('%.0f', (MAX_PRIORITY - prio) * 4294967296 + seq)
end

local function score_of(task)
  local seq = 0
  local raw = redis.call('HGET', K.task_meta, task)
  if raw then seq = cjson.decode(raw).seq or 0 end
  return score(task_fields(task), seq)
end

-- Record a terminal transition exactly once (the audit counts terminal_count == 1; a task with
-- a terminal_count entry is settled, which the unpipelined protocol relies on after a crash).
local function terminal(task, token, kind, now)
  redis.call('HINCRBY', K.terminal_count, task, 1)
  redis.call('HSET', K.settled, task, token)
  redis.call('XADD', K.events, 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'task', task, 'state', kind, 'ms', now)
end

local function release(task, owned_key)
  redis.call('HDEL', K.in_progress_tasks, task)
  redis.call('ZREM', K.in_progress_age, task)
  redis.call('HDEL', K.claims, task)
  redis.call('SREM', owned_key, task)
end

-- Put a held task back in todo with its original score (FIFO place kept). Idempotent, and
-- safe on half-done states left by the unpipelined protocol: a settled task is only released.
local function is_settled(task)
  return redis.call('HEXISTS', K.terminal_count, task) == 1
end

local function requeue(task, owned_key, now)
  if is_settled(task) then
    release(task, owned_key)
    return 0
  end
  release(task, owned_key)
  -- A finished/failed record without terminal_count (the commit point) is a report the
  -- unpipelined protocol wrote before crashing: uncommitted, so drop it, or the re-run would
  -- leave the task in two states (found by the crash-point test in tests/test_faults.py).
  redis.call('HDEL', K.finished_tasks, task)
  redis.call('HDEL', K.failed_final, task)
  redis.call('ZADD', K.todo_index, score_of(task), task)
  redis.call('HSET', K.todo_tasks, task, now)
  redis.call('ZADD', K.todo_age, now, task)
  return 1
end

local function fail_for_good(task, token, reason, owned_key, now)
  release(task, owned_key)
  redis.call('ZREM', K.todo_index, task)
  redis.call('HDEL', K.todo_tasks, task)
  redis.call('ZREM', K.todo_age, task)
  redis.call('HSET', K.failed_final, task, reason)
  redis.call('HSET', K.task_fail_reason, task, reason)
  redis.call('HINCRBY', K.stats, 'failed', 1)
  terminal(task, token, 'failed', now)
end

-- A task whose worker died holding it (reaper, or the restart of a worker under the same
-- name): count the death; at max_reaps it is poison and fails for good. Returns returned, failed.
local function reap_one(task, owned_key, max_reaps, now)
  local reaps = redis.call('HINCRBY', K.reap_count, task, 1)
  if reaps >= max_reaps and not is_settled(task) then
    fail_for_good(task, 'reaper', 'worker died while running it ' .. reaps .. ' times', owned_key, now)
    return 0, 1
  end
  return requeue(task, owned_key, now), 0
end

-- Claim up to n tasks for this worker: highest priority first, FIFO within a priority,
-- skipping tasks that do not fit its memory/cores or that already failed on it.
-- Cost O(log N + window): the window bounds the scan whatever the queue length.
local function claim(worker, incarnation, n, free_dram, cpus, window, now)
  if n <= 0 then return {} end
  local picked = {}
  local candidates = redis.call('ZRANGE', K.todo_index, 0, window - 1)
  local marker = ',' .. worker .. ','
  for _, task in ipairs(candidates) do
    local _, dram, cpu = task_fields(task)
    if dram <= free_dram and cpu <= cpus then
      local failed_on = redis.call('HGET', K.failed_tasks, task)
      if not failed_on or not string.find(failed_on, marker, 1, true) then
        picked[#picked + 1] = task
        free_dram = free_dram - dram
        if #picked >= n then break end
      end
    end
  end
  if #picked == 0 then return {} end
  local base = redis.call('HINCRBY', K.stats, 'claimed', #picked) - #picked
  local out = {}
  for i, task in ipairs(picked) do
    local token = incarnation .. ':' .. (base + i)
    redis.call('ZREM', K.todo_index, task)
    redis.call('HDEL', K.todo_tasks, task)
    redis.call('ZREM', K.todo_age, task)
    redis.call('HSET', K.in_progress_tasks, task, worker)
    redis.call('ZADD', K.in_progress_age, now, task)
    redis.call('HSET', K.claims, task, token)
    redis.call('SADD', K.owned, task)
    out[#out + 1] = task
    out[#out + 1] = token
    out[#out + 1] = redis.call('HGET', K.task_meta, task) or '{}'
  end
  return out
end

-- A task is never retried on a worker where it failed; if every live worker (heartbeat seen
-- within its lease, by server time) has failed it, waiting for a retry would strand it.
local function someone_else_can_retry(failed_on, now)
  for _, name in ipairs(redis.call('SMEMBERS', K.workers)) do
    if not string.find(failed_on, ',' .. name .. ',', 1, true) then
      local raw = redis.call('HGET', K.worker_status, name)
      if raw then
        local st = cjson.decode(raw)
        if st.seen_ms and st.lease_ms and st.seen_ms + st.lease_ms >= now then return true end
      end
    end
  end
  return false
end

-- A report or return whose token is no longer current drops the task from this name's owned set,
-- unless the name holds it again under a newer claim (a worker restarted under the same name
-- while an old incarnation woke up): removing it then would hide it from the reaper.
local function disown(task, worker)
  if redis.call('HGET', K.in_progress_tasks, task) ~= worker then
    redis.call('SREM', K.owned, task)
  end
end

-- Record one result; returns a CODE: FINISHED, FAILED_FINAL, RETRIED (failed, requeued for
-- retry), DUPLICATE (already recorded with this token), STALE (token no longer current).
local function report_one(worker, task, token, outcome, payload, max_retry, now)
  if redis.call('HGET', K.claims, task) ~= token then
    disown(task, worker)
    if redis.call('HGET', K.settled, task) == token then return CODE.DUPLICATE end
    redis.call('HINCRBY', K.stats, 'stale_reports', 1)
    return CODE.STALE
  end
  if outcome == 'finished' then
    release(task, K.owned)
    redis.call('HSET', K.finished_tasks, task, payload)
    redis.call('HINCRBY', K.stats, 'finished', 1)
    terminal(task, token, 'finished', now)
    return CODE.FINISHED
  end
  local failed_on = (redis.call('HGET', K.failed_tasks, task) or ',') .. worker .. ','
  redis.call('HSET', K.failed_tasks, task, failed_on)
  redis.call('HSET', K.task_fail_reason, task, payload)
  local attempts = redis.call('HINCRBY', K.attempts, task, 1)
  if attempts > max_retry then
    fail_for_good(task, token, payload, K.owned, now)
    return CODE.FAILED_FINAL
  end
  if not someone_else_can_retry(failed_on, now) then
    fail_for_good(task, token, payload .. ' [not retried: it failed on every live worker]', K.owned, now)
    return CODE.FAILED_FINAL
  end
  requeue(task, K.owned, now)
  redis.call('HINCRBY', K.stats, 'retried', 1)
  return CODE.RETRIED
end
