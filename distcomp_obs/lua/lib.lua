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

-- Variadic calls take many members at once (a task's life costs a few calls per *batch*, not
-- per task); `unpack` is bounded by Lua's C stack, so long lists go in slices.
local SLICE = 1000
local function call_many(cmd, key, items)
  for i = 1, #items, SLICE do
    redis.call(cmd, key, unpack(items, i, math.min(i + SLICE - 1, #items)))
  end
end

-- Candidates for a claim: the head of the priority index, read in chunks a little larger than
-- what is wanted (never more than `window`), with where each already failed (one HMGET per
-- chunk, none while no task has failed anywhere).
local function pick(worker, n, free_dram, cpus, window)
  local picked, drams = {}, 0
  local marker = ',' .. worker .. ','
  local any_failed = redis.call('HLEN', K.failed_tasks) > 0
  local start = 0
  while #picked < n and start < window do
    local stop = math.min(window, start + n - #picked + 16) - 1
    local candidates = redis.call('ZRANGE', K.todo_index, start, stop)
    if #candidates == 0 then break end
    local failed = any_failed and redis.call('HMGET', K.failed_tasks, unpack(candidates)) or {}
    for i, task in ipairs(candidates) do
      local _, dram, cpu = task_fields(task)
      if dram <= free_dram - drams and cpu <= cpus then
        local f = failed[i]
        if not f or not string.find(f, marker, 1, true) then
          picked[#picked + 1] = task
          drams = drams + dram
          if #picked >= n then break end
        end
      end
    end
    start = stop + 1
  end
  return picked
end

-- Claim up to n tasks for this worker: highest priority first, FIFO within a priority,
-- skipping tasks that do not fit its memory/cores or that already failed on it.
-- Cost O(log N + window) and about ten calls whatever n: the window bounds the scan.
local function claim(worker, incarnation, n, free_dram, cpus, window, now)
  if n <= 0 then return {} end
  local picked = pick(worker, n, free_dram, cpus, window)
  if #picked == 0 then return {} end
  local base = redis.call('HINCRBY', K.stats, 'claimed', #picked) - #picked
  local holders, ages, tokens = {}, {}, {}
  for i, task in ipairs(picked) do
    holders[#holders + 1] = task
    holders[#holders + 1] = worker
    ages[#ages + 1] = now
    ages[#ages + 1] = task
    tokens[#tokens + 1] = task
    tokens[#tokens + 1] = incarnation .. ':' .. (base + i)
  end
  call_many('ZREM', K.todo_index, picked)
  call_many('HDEL', K.todo_tasks, picked)
  call_many('ZREM', K.todo_age, picked)
  call_many('HSET', K.in_progress_tasks, holders)
  call_many('ZADD', K.in_progress_age, ages)
  call_many('HSET', K.claims, tokens)
  call_many('SADD', K.owned, picked)
  local metas = redis.call('HMGET', K.task_meta, unpack(picked))
  local out = {}
  for i, task in ipairs(picked) do
    out[#out + 1] = task
    out[#out + 1] = tokens[2 * i]
    out[#out + 1] = metas[i] or '{}'
  end
  return out
end

-- Record a batch of finished tasks whose claims were checked current: a few variadic calls for
-- the batch; terminal_count (the commit point the audit checks) stays one HINCRBY per task.
-- One event for the batch: 'task' repeats, once per task.
local function finish_many(items, now)
  local tasks, outputs, tokens = {}, {}, {}
  local event = {'MAXLEN', '~', EVENTS_MAXLEN, '*', 'state', 'finished', 'ms', now}
  for _, it in ipairs(items) do
    local task = it[1]
    redis.call('HINCRBY', K.terminal_count, task, 1)
    tasks[#tasks + 1] = task
    outputs[#outputs + 1] = task
    outputs[#outputs + 1] = it[3]
    tokens[#tokens + 1] = task
    tokens[#tokens + 1] = it[2]
    event[#event + 1] = 'task'
    event[#event + 1] = task
  end
  call_many('HDEL', K.in_progress_tasks, tasks)
  call_many('ZREM', K.in_progress_age, tasks)
  call_many('HDEL', K.claims, tasks)
  call_many('SREM', K.owned, tasks)
  call_many('HSET', K.finished_tasks, outputs)
  call_many('HSET', K.settled, tokens)
  redis.call('HINCRBY', K.stats, 'finished', #tasks)
  redis.call('XADD', K.events, unpack(event))
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
