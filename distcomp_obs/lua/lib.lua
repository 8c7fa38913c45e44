-- lib.lua: the steps shared by every script. queue/scripts.py prepends a generated preamble
-- (from keys.SCRIPT_KEYS and records.py) to it and to each script body:
--   K.<name>         KEYS[i] named as in keys.py (K.lease: the calling worker's)
--   FIRST_EXTRA_KEY  index of the first script-specific key (reap.lua's lease keys)
--   CODE.<NAME>      report codes (records.ReportCode)
--   MAX_PRIORITY, LAYOUT
-- so the key order, codes and constants are written once, in Python.
--
-- Record layout 3 (docs/ARCHITECTURE.md#records): a queued task costs one field in `tasks`
-- (line -> "seq submitted_us[ trace]") and one member of `todo_tasks`; a held task one field
-- in `in_progress_tasks` (line -> "token claim_ms started worker"); a done task one field in
-- `finished_tasks` or `failed_final` (a record: JSON header line, then the output or reason).
-- Every step below takes many members per call, so a batch costs a few calls, not a few per task.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- type:priority:min_dram_gb:min_cpu:params -> priority, dram, cpu
local function task_fields(task)
  local _, _, prio, dram, cpu = string.find(task, '^[^:]*:([^:]*):([^:]*):([^:]*):')
  return tonumber(prio) or 0, tonumber(dram) or 0, tonumber(cpu) or 0
end

-- Claim order as 17 digits that sort as text (records.claim_key): MAX_PRIORITY - priority in 7
-- digits (highest priority first), then the submit order in 10 (FIFO within a priority).
local function group_text(prio)
  return string.format('%07d', MAX_PRIORITY - prio)
end

local function seq_text(seq)
  local text = tostring(seq)
  return string.rep('0', 10 - #text) .. text
end

local function score(prio, seq)
  return group_text(prio) .. seq_text(seq)
end

local function seq_of(meta)
  return tonumber(string.match(meta or '', '^(%d+)')) or 0
end

-- The claim index (todo_tasks): every waiting task is one member "dram:cpu|<claim key>|task" of a
-- sorted set of equal scores, so a claim reads the head of each resource class that fits with a
-- lexical range and never scans tasks it cannot take; todo_classes lists the classes that may
-- have tasks waiting (a superset, cleaned lazily; ZLEXCOUNT counts one class).
local function class_of(task)
  local _, _, dram, cpu = string.find(task, '^[^:]*:[^:]*:([^:]*):([^:]*):')
  return (dram or '0') .. ':' .. (cpu or '0')
end

local function member(task, seq)
  return class_of(task) .. '|' .. score(task_fields(task), seq) .. '|' .. task
end

local function class_range(class)
  return '[' .. class .. '|', '(' .. class .. '|~'
end

-- Variadic calls take many members at once; `unpack` is bounded by Lua's C stack, so long
-- lists go in slices.
local SLICE = 1000
local function call_many(cmd, key, items)
  for i = 1, #items, SLICE do
    redis.call(cmd, key, unpack(items, i, math.min(i + SLICE - 1, #items)))
  end
end

-- Drop a class from the list once none of its tasks waits.
local function forget_if_empty(class)
  local lo, hi = class_range(class)
  if redis.call('ZLEXCOUNT', K.todo_tasks, lo, hi) == 0 then redis.call('SREM', K.todo_classes, class) end
end

-- Make a task claimable (idempotent: the member is the same whenever it is added).
local function todo_add(task)
  redis.call('SADD', K.todo_classes, class_of(task))
  redis.call('ZADD', K.todo_tasks, 0, member(task, seq_of(redis.call('HGET', K.tasks, task))))
end

local function todo_remove(task)
  if redis.call('ZREM', K.todo_tasks, member(task, seq_of(redis.call('HGET', K.tasks, task)))) == 1 then
    forget_if_empty(class_of(task))
  end
end

-- in_progress_tasks values: "token claim_ms started worker" (started: 's' once its worker said
-- it started, else '-'); the worker name comes last, as it is the only part that may hold spaces.
local function holding(token, ms, started, job, worker)
  return token .. ' ' .. ms .. ' ' .. started .. ' ' .. job .. ' ' .. worker
end

-- -> token, ms, started, worker, job
local function parse_holding(value)
  local token, ms, started, job, worker = string.match(value, '^(%S+) (%d+) (%S) (%S+) (.*)$')
  return token, ms, started, worker, job
end

-- The job a `tasks` field names ('-' when none).
local function job_of(meta)
  return string.match(meta or '', '^%d+ %d+ (%S+)') or '-'
end

-- Count n tasks of `job` into one of its counters (jobs: "job<TAB>counter" -> n).
local function job_count(job, counter, n)
  redis.call('HINCRBY', K.jobs, job .. '\t' .. counter, n)
end

-- Whether an in_progress_tasks value carries this claim token (a plain prefix test).
local function holds(value, token)
  return value ~= false and value ~= nil and string.find(value, token .. ' ', 1, true) == 1
end

-- A task is settled once its finished or failed record exists: that write is the commit point
-- (the one-command protocol writes it first, with HSETNX, and releases the claim after).
local function is_settled(task)
  return redis.call('HEXISTS', K.finished_tasks, task) == 1 or redis.call('HEXISTS', K.failed_final, task) == 1
    or redis.call('HEXISTS', K.cancelled_tasks, task) == 1
end

-- A done task's record: a JSON header (the claim token, worker, server time of the report, and
-- what the worker measured: exit code, duration, ...; `detail` holds those members, without
-- braces), a newline, then the task's output (finished) or the reason (failed). The part shared
-- by a batch is built once (`record_middle`): turning a number into text costs ~0.5 µs in Lua.
local function record_middle(worker, now)
  return '","worker":' .. cjson.encode(worker) .. ',"at":' .. now
end

local function record_with(middle, token, detail, body)
  if detail == '' then return '{"token":"' .. token .. middle .. '}\n' .. body end
  return '{"token":"' .. token .. middle .. ',' .. detail .. '}\n' .. body
end

local function record(token, worker, now, detail, body)
  return record_with(record_middle(worker, now), token, detail or '', body)
end

-- One event per batch of terminal transitions: 'task' repeats, once per task. No MAXLEN: the
-- retention chore (expire.lua) trims the stream as it forgets the tasks it names.
local function event(kind, tasks, now)
  local fields = {'*', 'state', kind, 'ms', now}
  for _, task in ipairs(tasks) do
    fields[#fields + 1] = 'task'
    fields[#fields + 1] = task
  end
  redis.call('XADD', K.events, unpack(fields))
end

-- Record a task cancelled (a terminal state): released, its cancel request consumed.
local function cancel_held(task, token, who, reason, now)
  job_count(job_of(redis.call('HGET', K.tasks, task)), 'cancelled', 1)
  redis.call('HDEL', K.in_progress_tasks, task)
  redis.call('HDEL', K.cancel_requests, task)
  redis.call('HSET', K.cancelled_tasks, task, record(token, who, now, '', reason))
  redis.call('HINCRBY', K.stats, 'cancelled', 1)
  event('cancelled', {task}, now)
end

-- Put a held task back in todo, FIFO place kept. Idempotent, and safe on half-done states left
-- by the one-command protocol: a settled task is only released; a task with a cancel request is
-- recorded cancelled instead (its worker died or gave it back before stopping it).
local function requeue(task)
  if redis.call('HEXISTS', K.cancel_requests, task) == 1 and not is_settled(task) then
    cancel_held(task, 'requeue', 'reaper', 'cancelled (its worker stopped before it could)', now_ms())
    return 0
  end
  redis.call('HDEL', K.in_progress_tasks, task)
  if is_settled(task) then return 0 end
  todo_add(task)
  return 1
end

-- The cancel requests for tasks this incarnation holds (none to read while none is pending).
local function cancels_for(incarnation)
  local out = {}
  if redis.call('HLEN', K.cancel_requests) == 0 then return out end
  local all = redis.call('HGETALL', K.cancel_requests)
  local prefix = incarnation .. ':'
  for i = 1, #all, 2 do
    if string.sub(all[i + 1], 1, #prefix) == prefix then out[#out + 1] = all[i] end
  end
  return out
end

local function fail_for_good(task, token, worker, reason, detail, now)
  job_count(job_of(redis.call('HGET', K.tasks, task)), 'failed', 1)
  redis.call('HDEL', K.in_progress_tasks, task)
  redis.call('HDEL', K.cancel_requests, task)
  todo_remove(task)
  redis.call('HSET', K.failed_final, task, record(token, worker, now, detail, reason))
  redis.call('HSET', K.task_fail_reason, task, reason)
  redis.call('HINCRBY', K.stats, 'failed', 1)
  event('failed', {task}, now)
end

-- A task whose worker died holding it (reaper, or the restart of a worker under the same
-- name): count the death if it may have been running; at max_reaps it is poison and fails for
-- good. Returns returned, failed.
local function reap_one(task, worker, max_reaps, now, counted)
  if not counted or is_settled(task) then return requeue(task), 0 end
  local reaps = redis.call('HINCRBY', K.reap_count, task, 1)
  if reaps >= max_reaps then
    fail_for_good(task, 'reaper', worker, 'worker died while running it ' .. reaps .. ' times', '', now)
    return 0, 1
  end
  return requeue(task), 0
end

-- Candidates for a claim: the head of every resource class that fits this worker (a lexical
-- range each, in chunks a little larger than what is wanted, at most `window` deep), merged in
-- claim order; where each already failed comes from one HMGET per chunk (none while no task has
-- failed anywhere). Classes that do not fit cost nothing, however many tasks they hold.
-- Returns two lists in claim order: members and their tasks.
local function class_heads(class, n, window, marker, any_failed)
  local out_members, out_tasks, offset = {}, {}, 0
  local skip = #class + 20  -- "class|<17 digits>|"
  local lo, hi = class_range(class)
  while #out_tasks < n and offset < window do
    local chunk = math.min(window - offset, n - #out_tasks + 16)
    local members = redis.call('ZRANGEBYLEX', K.todo_tasks, lo, hi, 'LIMIT', offset, chunk)
    if #members == 0 then
      if offset == 0 then redis.call('SREM', K.todo_classes, class) end  -- emptied meanwhile
      break
    end
    local tasks = {}
    for i, m in ipairs(members) do tasks[i] = string.sub(m, skip) end
    local failed = any_failed and redis.call('HMGET', K.failed_tasks, unpack(tasks)) or {}
    for i, m in ipairs(members) do
      local f = failed[i]
      if not f or not string.find(f, marker, 1, true) then
        out_members[#out_members + 1] = m
        out_tasks[#out_tasks + 1] = tasks[i]
      end
    end
    offset = offset + #members
  end
  return out_members, out_tasks
end

local function pick(worker, n, free_dram, cpus, window)
  local marker = ',' .. worker .. ','
  local any_failed = redis.call('HLEN', K.failed_tasks) > 0
  local heads = {}
  for _, class in ipairs(redis.call('SMEMBERS', K.todo_classes)) do
    local _, _, dram, cpu = string.find(class, '^([^:]*):(.*)$')
    dram = tonumber(dram) or 0
    if dram <= free_dram and (tonumber(cpu) or 0) <= cpus then
      local members, tasks = class_heads(class, n, window, marker, any_failed)
      if #tasks > 0 then heads[#heads + 1] = {class, dram, members, tasks} end
    end
  end
  if #heads == 1 and heads[1][2] == 0 then  -- the common case: one class, no memory to share
    local h = heads[1]
    local per_class = {[h[1]] = true}
    if #h[4] <= n then return h[4], h[3], per_class end
    return {unpack(h[4], 1, n)}, {unpack(h[3], 1, n)}, per_class
  end
  local candidates = {}
  for _, h in ipairs(heads) do
    for i, m in ipairs(h[3]) do
      -- {member, task, class, dram, "score|task" (the claim order)}
      candidates[#candidates + 1] = {m, h[4][i], h[1], h[2], string.sub(m, #h[1] + 2)}
    end
  end
  if #heads > 1 then  -- one class's heads come in claim order already
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
  local current = redis.call('HMGET', K.in_progress_tasks, unpack(tasks))
  local marks = {}
  for i, task in ipairs(tasks) do
    if current[i] then
      local token, ms, started, worker, job = parse_holding(current[i])
      if token == pairs_[2 * i] and started ~= 's' then
        marks[#marks + 1] = task
        marks[#marks + 1] = holding(token, ms, 's', job, worker)
      end
    end
  end
  if #marks > 0 then call_many('HSET', K.in_progress_tasks, marks) end
end

-- Which of the tasks a dead worker held ({task, holding value} pairs) may have been running, so
-- that its death counts toward poison (max_reaps): those it reported started, plus, in claim
-- order, as many unreported ones as its other slots could have started since its last report (a
-- task that kills its worker at once never gets reported). Buffered tasks that never started
-- are not counted.
local function maybe_running(held, worker)
  local counted = {}
  if #held == 0 then return counted end
  local raw = redis.call('HGET', K.worker_status, worker)
  local slots = raw and tonumber(cjson.decode(raw).concurrency) or 1
  local unmarked = {}
  for _, h in ipairs(held) do
    local _, _, started = parse_holding(h[2])
    if started == 's' then
      counted[h[1]] = true
      slots = slots - 1
    else
      unmarked[#unmarked + 1] = h[1]
    end
  end
  if slots > 0 and #unmarked > 0 then
    local metas = redis.call('HMGET', K.tasks, unpack(unmarked))
    local order = {}
    for i, task in ipairs(unmarked) do order[i] = {score(task_fields(task), seq_of(metas[i])), task} end
    table.sort(order, function(a, b) return a[1] < b[1] end)
    for i = 1, math.min(slots, #order) do counted[order[i][2]] = true end
  end
  return counted
end

-- What one worker holds: {task, holding value} pairs. A walk of in_progress_tasks, which holds
-- only claimed tasks (bounded by workers x (slots + prefetch)); used on rare paths only (reaper,
-- restart, leave, reconciliation), so claims and reports need no per-worker set.
local function held_by(names)
  local out = {}
  local all = redis.call('HGETALL', K.in_progress_tasks)
  for i = 1, #all, 2 do
    local _, _, _, worker = parse_holding(all[i + 1])
    if worker and names[worker] then
      out[worker] = out[worker] or {}
      table.insert(out[worker], {all[i], all[i + 1]})
    end
  end
  return out
end

-- Claim up to n tasks for this worker: highest priority first, FIFO within a priority,
-- skipping tasks that do not fit its memory/cores or that already failed on it.
-- Returns {} or {token, task1, meta1, task2, meta2, ...} (one token for the batch).
-- A few calls whatever n: the window bounds the scan.
local function claim(worker, incarnation, n, free_dram, cpus, window, now)
  if n <= 0 then return {} end
  local picked, members, per_class = pick(worker, n, free_dram, cpus, window)
  if #picked == 0 then return {} end
  -- One token per claimed batch: `stats.claimed` only grows, so two claims of one task never share
  -- a token, which is all fencing needs (and it spares a number-to-text per task).
  local token = incarnation .. ':' .. redis.call('HINCRBY', K.stats, 'claimed', #picked)
  local holders = {}
  local head, tail = token .. ' ' .. now .. ' - ', ' ' .. worker
  local metas = redis.call('HMGET', K.tasks, unpack(picked))
  for i, task in ipairs(picked) do
    holders[#holders + 1] = task
    holders[#holders + 1] = head .. job_of(metas[i]) .. tail
  end
  call_many('ZREM', K.todo_tasks, members)
  for class in pairs(per_class) do forget_if_empty(class) end
  call_many('HSET', K.in_progress_tasks, holders)
  local out = {token}
  for i, task in ipairs(picked) do
    out[#out + 1] = task
    out[#out + 1] = metas[i] or ''
  end
  return out
end

-- Record a batch of finished tasks whose claims were checked current: three calls for the
-- batch, whatever its size. `at`: where each report starts in ARGV (task, token, outcome,
-- output, detail).
local function finish_many(worker, at, values, now)
  local tasks, records, jobs = {}, {}, {}
  local middle = record_middle(worker, now)
  for i, b in ipairs(at) do
    tasks[#tasks + 1] = ARGV[b]
    records[#records + 1] = ARGV[b]
    records[#records + 1] = record_with(middle, ARGV[b + 1], ARGV[b + 4], ARGV[b + 3])
    local _, _, _, _, job = parse_holding(values[i])
    jobs[job] = (jobs[job] or 0) + 1
  end
  for job, n in pairs(jobs) do job_count(job, 'finished', n) end
  call_many('HDEL', K.in_progress_tasks, tasks)
  if redis.call('HLEN', K.cancel_requests) > 0 then call_many('HDEL', K.cancel_requests, tasks) end
  call_many('HSET', K.finished_tasks, records)
  redis.call('HINCRBY', K.stats, 'finished', #tasks)
  event('finished', tasks, now)
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

-- A report whose claim is no longer current: DUPLICATE when its task was recorded under this
-- very token (a re-sent report), else STALE.
local function not_current(task, token)
  local done = redis.call('HGET', K.finished_tasks, task) or redis.call('HGET', K.failed_final, task)
  if done and string.find(done, '"token":"' .. token .. '"', 1, true) then return CODE.DUPLICATE end
  redis.call('HINCRBY', K.stats, 'stale_reports', 1)
  return CODE.STALE
end

-- Record one failure: retried elsewhere, or failed for good; returns a CODE. Each retried
-- attempt's record is kept (attempt_log: one JSON line per attempt, the reason included).
local function fail_one(worker, task, token, reason, detail, max_retry, now)
  local failed_on = (redis.call('HGET', K.failed_tasks, task) or ',') .. worker .. ','
  redis.call('HSET', K.failed_tasks, task, failed_on)
  local attempts = redis.call('HINCRBY', K.attempts, task, 1)
  if attempts > max_retry then
    fail_for_good(task, token, worker, reason, detail, now)
    return CODE.FAILED_FINAL
  end
  if not someone_else_can_retry(failed_on, now) then
    fail_for_good(task, token, worker, reason .. ' [not retried: it failed on every live worker]', detail, now)
    return CODE.FAILED_FINAL
  end
  redis.call('HSET', K.task_fail_reason, task, reason)
  local header = string.sub(record(token, worker, now, detail, ''), 1, -3)
  local line = header .. ',"reason":' .. cjson.encode(reason) .. '}\n'
  redis.call('HSET', K.attempt_log, task, (redis.call('HGET', K.attempt_log, task) or '') .. line)
  requeue(task)
  redis.call('HINCRBY', K.stats, 'retried', 1)
  return CODE.RETRIED
end

-- Forget a done task entirely (retention, purge-finished, retry-failed): returns the state it
-- was in ('finished' | 'failed'), or nil if it is not done, or not in state `only` (left alone).
local PER_TASK = {'finished_tasks', 'failed_final', 'cancelled_tasks', 'failed_tasks', 'task_fail_reason', 'attempts', 'attempt_log',
  'reap_count', 'tasks'}
local function forget_done(task, only)
  local state = redis.call('HEXISTS', K.finished_tasks, task) == 1 and 'finished'
    or (redis.call('HEXISTS', K.failed_final, task) == 1 and 'failed')
    or (redis.call('HEXISTS', K.cancelled_tasks, task) == 1 and 'cancelled')
  if not state or (only and state ~= only) or redis.call('HEXISTS', K.in_progress_tasks, task) == 1 then
    return nil
  end
  local meta = redis.call('HGET', K.tasks, task)
  redis.call('HDEL', K.task_ids, tostring(seq_of(meta)))
  if only then  -- purge, retry, delete: the job no longer has this task (retention keeps its counts)
    job_count(job_of(meta), state, -1)
    job_count(job_of(meta), 'submitted', -1)
  end
  for _, name in ipairs(PER_TASK) do redis.call('HDEL', K[name], task) end
  return state
end
