-- settle.lua: record a batch of results and, in the same atomic round trip, claim the next
-- batch (BullMQ's finish-and-fetch): a steady-state worker cycle costs one round trip.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] worker  ARGV[2] incarnation  ARGV[3] claim n (0 = report only)  ARGV[4] free_dram_gb
-- ARGV[5] cpus  ARGV[6] window  ARGV[7] max_retry  ARGV[8] number of reports r,
-- then r groups of 4: task, token, outcome (finished|failed), payload (stdout or reason),
-- then s (tasks started since the last settle) and s pairs: task, token (see maybe_running).
-- Returns {lease_ok (1/-1), remaining, {code per report}, task1, token1, meta1, ...}
-- with a CODE per report (report_one in lib.lua).
local now = now_ms()
local max_retry = tonumber(ARGV[7])
local r = tonumber(ARGV[8])
local codes = {}
local retried = false
-- One HMGET tells which reports still hold their claim: those that finished are recorded
-- together (finish_many); failures, stale and repeated reports go through report_one, after.
local started = {}
for i = 10 + r * 4, 9 + r * 4 + 2 * (tonumber(ARGV[9 + r * 4]) or 0) do started[#started + 1] = ARGV[i] end
mark_started(started)
local tasks = {}
for i = 0, r - 1 do tasks[i + 1] = ARGV[9 + i * 4] end
local current = r > 0 and redis.call('HMGET', K.claims, unpack(tasks)) or {}
local finished, rest, seen = {}, {}, {}
for i = 0, r - 1 do
  local b = 9 + i * 4
  local task, token = ARGV[b], ARGV[b + 1]
  if ARGV[b + 2] == 'finished' and current[i + 1] == token and not seen[task] then
    finished[#finished + 1] = {task, token, ARGV[b + 3]}
    codes[i + 1] = CODE.FINISHED
  else
    rest[#rest + 1] = i
  end
  seen[task] = true
end
if #finished > 0 then finish_many(finished, now) end
for _, i in ipairs(rest) do
  local b = 9 + i * 4
  local code = report_one(ARGV[1], ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], max_retry, now)
  if code == CODE.RETRIED then retried = true end
  codes[i + 1] = code
end
if retried then redis.call('PUBLISH', K.wake_channel, 'submit 0') end
local lease_ok = redis.call('GET', K.lease) == ARGV[2]
local out = {}
if lease_ok then
  out = claim(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), now)
end
table.insert(out, 1, codes)
table.insert(out, 1, redis.call('ZCARD', K.todo_index))
table.insert(out, 1, lease_ok and 1 or -1)
return out
