-- settle.lua: record a batch of results and, in the same atomic round trip, claim the next
-- batch (BullMQ's finish-and-fetch): a steady-state worker cycle costs one round trip.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] worker  ARGV[2] incarnation  ARGV[3] claim n (0 = report only)  ARGV[4] free_dram_gb
-- ARGV[5] cpus  ARGV[6] window  ARGV[7] max_retry  ARGV[8] number of reports r,
-- then r groups of 5: task, token, outcome (finished|failed), payload (stdout or reason),
-- detail (the members of a JSON object of what the worker measured, without braces, or ''),
-- then s (tasks started since the last settle) and s pairs: task, token (see maybe_running).
-- A report with outcome 'cancelled' (stopped on a cancel request) records the task cancelled.
-- Returns {lease_ok (1/-1), remaining, {code per report}, {tasks this worker must stop}, token, task1,
-- meta1, ...} (no token when nothing was claimed)
-- with a CODE per report.
local now = now_ms()
local worker = ARGV[1]
local max_retry = tonumber(ARGV[7])
local r = tonumber(ARGV[8])
local first_start = 10 + r * 5
local started = {}
for i = first_start, first_start - 1 + 2 * (tonumber(ARGV[first_start - 1]) or 0) do started[#started + 1] = ARGV[i] end
mark_started(started)
-- One HMGET tells which reports still hold their claim: those that finished are recorded
-- together (finish_many); failures, stale and repeated reports one by one, after.
local codes, retried = {}, false
local tasks = {}
for i = 0, r - 1 do tasks[i + 1] = ARGV[9 + i * 5] end
local current = r > 0 and redis.call('HMGET', K.in_progress_tasks, unpack(tasks)) or {}
local finished, values, rest, seen = {}, {}, {}, {}
for i = 0, r - 1 do
  local b = 9 + i * 5
  local task, token = ARGV[b], ARGV[b + 1]
  local ours = holds(current[i + 1], token) and not seen[task]
  if ours and ARGV[b + 2] == 'finished' then
    finished[#finished + 1] = b
    values[#values + 1] = current[i + 1]
    codes[i + 1] = CODE.FINISHED
  elseif ours and ARGV[b + 2] == 'cancelled' then
    cancel_held(task, token, worker, ARGV[b + 3], now)
    codes[i + 1] = CODE.CANCELLED
  elseif ours then
    rest[#rest + 1] = i
  else
    codes[i + 1] = not_current(task, token)
  end
  seen[task] = true
end
if #finished > 0 then finish_many(worker, finished, values, now) end
for _, i in ipairs(rest) do
  local b = 9 + i * 5
  local code = fail_one(worker, ARGV[b], ARGV[b + 1], ARGV[b + 3], ARGV[b + 4], max_retry, now)
  if code == CODE.RETRIED then retried = true end
  codes[i + 1] = code
end
if retried then redis.call('PUBLISH', K.wake_channel, 'submit 0') end
local lease_ok = redis.call('GET', K.lease) == ARGV[2]
local out = {}
if lease_ok then
  out = claim(worker, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), now)
end
table.insert(out, 1, cancels_for(ARGV[2]))
table.insert(out, 1, codes)
table.insert(out, 1, redis.call('ZCARD', K.todo_tasks))
table.insert(out, 1, lease_ok and 1 or -1)
return out
