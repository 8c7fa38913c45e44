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

-- The claim-by-class index (todo_by_class): every waiting task also sits in one sorted set of
-- equal scores as "dram:cpu|<17-digit score>|task", so a claim reads the head of each resource
-- class that fits with a lexical range and never scans tasks it cannot take; todo_classes counts
-- the classes that may have tasks waiting (a superset, cleaned lazily; ZLEXCOUNT counts a class).
local function class_of(task)
  local _, _, dram, cpu = string.find(task, '^[^:]*:[^:]*:([^:]*):([^:]*):')
  return (dram or '0') .. ':' .. (cpu or '0')
end

local function by_class_member(task, score_text)
  return class_of(task) .. '|' .. string.rep('0', 17 - #score_text) .. score_text .. '|' .. task
end

local function class_range(class)
  return '[' .. class .. '|', '(' .. class .. '|~'
end

-- Make a task claimable: both indexes (idempotent, in any state a crash may have left).
local function todo_add(task, score_text)
  redis.call('ZADD', K.todo_index, score_text, task)
  redis.call('SADD', K.todo_classes, class_of(task))
  redis.call('ZADD', K.todo_by_class, 0, by_class_member(task, score_text))
end

-- Drop a class from the list once none of its tasks waits.
local function forget_if_empty(class)
  local lo, hi = class_range(class)
  if redis.call('ZLEXCOUNT', K.todo_by_class, lo, hi) == 0 then redis.call('SREM', K.todo_classes, class) end
end

-- Take a task out of both indexes (idempotent).
local function todo_remove(task)
  redis.call('ZREM', K.todo_index, task)
  redis.call('ZREM', K.todo_by_class, by_class_member(task, score_of(task)))
  forget_if_empty(class_of(task))
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
  redis.call('HDEL', K.started, task)
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
  redis.call('HSET', K.todo_tasks, task, now)
  redis.call('ZADD', K.todo_age, now, task)
  todo_add(task, score_of(task))  -- claimable last
  return 1
end

local function fail_for_good(task, token, reason, owned_key, now)
  release(task, owned_key)
  todo_remove(task)
  redis.call('HDEL', K.todo_tasks, task)
  redis.call('ZREM', K.todo_age, task)
  redis.call('HSET', K.failed_final, task, reason)
  redis.call('HSET', K.task_fail_reason, task, reason)
  redis.call('HINCRBY', K.stats, 'failed', 1)
  terminal(task, token, 'failed', now)
end

-- A task whose worker died holding it (reaper, or the restart of a worker under the same
-- name): count the death; at max_reaps it is poison and fails for good. Returns returned, failed.
local function reap_one(task, owned_key, max_reaps, now, counted)
  if not counted then return requeue(task, owned_key, now), 0 end
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

-- Candidates for a claim: the head of every resource class that fits this worker (a lexical
-- range each, in chunks a little larger than what is wanted, at most `window` deep), merged in
-- claim order; where each already failed comes from one HMGET per chunk (none while no task has
-- failed anywhere). Classes that do not fit cost nothing, however many tasks they hold.
local function class_heads(class, n, window, marker, any_failed)
  local out, offset = {}, 0
  local prefix = class .. '|'
  local lo, hi = class_range(class)
  while #out < n and offset < window do
    local chunk = math.min(window - offset, n - #out + 16)
    local members = redis.call('ZRANGEBYLEX', K.todo_by_class, lo, hi, 'LIMIT', offset, chunk)
    if #members == 0 then
      if offset == 0 then redis.call('SREM', K.todo_classes, class) end  -- emptied meanwhile
      break
    end
    local tasks = {}
    for i, m in ipairs(members) do tasks[i] = string.sub(m, #prefix + 19) end
    local failed = any_failed and redis.call('HMGET', K.failed_tasks, unpack(tasks)) or {}
    for i, m in ipairs(members) do
      local f = failed[i]
      if not f or not string.find(f, marker, 1, true) then out[#out + 1] = {m, tasks[i]} end
    end
    offset = offset + #members
  end
  return out
end

local function pick(worker, n, free_dram, cpus, window)
  local marker = ',' .. worker .. ','
  local any_failed = redis.call('HLEN', K.failed_tasks) > 0
  local candidates, sources = {}, 0
  for _, class in ipairs(redis.call('SMEMBERS', K.todo_classes)) do
    local _, _, dram, cpu = string.find(class, '^([^:]*):(.*)$')
    dram = tonumber(dram) or 0
    if dram <= free_dram and (tonumber(cpu) or 0) <= cpus then
      local heads = class_heads(class, n, window, marker, any_failed)
      if #heads > 0 then sources = sources + 1 end
      for _, c in ipairs(heads) do
        -- {member, task, class, dram, "score|task" (the claim order)}
        candidates[#candidates + 1] = {c[1], c[2], class, dram, string.sub(c[1], #class + 2)}
      end
    end
  end
  if sources > 1 then  -- one class's heads come in claim order already
    table.sort(candidates, function(a, b) return a[5] < b[5] end)
  end
  local picked, members, per_class, drams = {}, {}, {}, 0
  for _, c in ipairs(candidates) do
    if #picked >= n then break end
    if c[4] <= free_dram - drams then
      picked[#picked + 1] = c[2]
      members[#members + 1] = c[1]
      per_class[c[3]] = true
      drams = drams + c[4]
    end
  end
  return picked, members, per_class
end

-- Mark tasks started, from (task, token) pairs a worker reports with its next settle: only
-- those still held under that token (one HMGET, one HSET for the batch).
local function mark_started(pairs_)
  if #pairs_ == 0 then return end
  local tasks = {}
  for i = 1, #pairs_, 2 do tasks[#tasks + 1] = pairs_[i] end
  local current = redis.call('HMGET', K.claims, unpack(tasks))
  local marks = {}
  for i, task in ipairs(tasks) do
    if current[i] == pairs_[2 * i] then
      marks[#marks + 1] = task
      marks[#marks + 1] = current[i]
    end
  end
  if #marks > 0 then call_many('HSET', K.started, marks) end
end

-- Which of the tasks a dead worker held may have been running, so that its death counts toward
-- poison (max_reaps): those it reported started, plus, in claim order, as many unreported ones as
-- its other slots could have started since its last report (a task that kills its worker at once
-- never gets reported). Buffered tasks that never started are not counted.
local function maybe_running(tasks, worker)
  local counted = {}
  if #tasks == 0 then return counted end
  local raw = redis.call('HGET', K.worker_status, worker)
  local slots = raw and tonumber(cjson.decode(raw).concurrency) or 1
  local claims = redis.call('HMGET', K.claims, unpack(tasks))
  local marks = redis.call('HMGET', K.started, unpack(tasks))
  local unmarked = {}
  for i, task in ipairs(tasks) do
    if marks[i] and marks[i] == claims[i] then
      counted[task] = true
      slots = slots - 1
    else
      unmarked[#unmarked + 1] = task
    end
  end
  if slots > 0 and #unmarked > 0 then
    local order = {}
    for i, task in ipairs(unmarked) do order[i] = {tonumber(score_of(task)), task} end
    table.sort(order, function(a, b) return a[1] < b[1] end)
    for i = 1, math.min(slots, #order) do counted[order[i][2]] = true end
  end
  return counted
end

-- Claim up to n tasks for this worker: highest priority first, FIFO within a priority,
-- skipping tasks that do not fit its memory/cores or that already failed on it.
-- Cost O(log N + window) and about ten calls whatever n: the window bounds the scan.
local function claim(worker, incarnation, n, free_dram, cpus, window, now)
  if n <= 0 then return {} end
  local picked, members, per_class = pick(worker, n, free_dram, cpus, window)
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
  call_many('ZREM', K.todo_by_class, members)
  for class in pairs(per_class) do forget_if_empty(class) end
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
  call_many('HDEL', K.started, tasks)
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
