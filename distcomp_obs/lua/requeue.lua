-- requeue.lua: return held tasks to todo (SIGTERM, memory pressure, restart, reconciliation).
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] worker  ARGV[2] max_reaps: 0, or (restart: a previous incarnation died holding these)
-- count a death per task as the reaper does, so a task that kills a worker restarted under the
-- same name is still caught as poison. Then pairs task, token. An empty token means "whatever
-- token, as long as this worker is the recorded holder" (restart and reconciliation).
-- Returns the number of tasks put back in todo.
local now = now_ms()
local worker = ARGV[1]
local max_reaps = tonumber(ARGV[2])
local n = 0
local tasks = {}
for i = 3, #ARGV, 2 do tasks[#tasks + 1] = ARGV[i] end
if #tasks == 0 then return 0 end
local current = redis.call('HMGET', K.in_progress_tasks, unpack(tasks))
local mine = {}
for j, task in ipairs(tasks) do
  local value, token = current[j], ARGV[2 + 2 * j]
  if value then
    local held_token, _, _, holder = parse_holding(value)
    if (token == '' and holder == worker) or held_token == token then mine[#mine + 1] = {task, value} end
  end
end
-- A restart: the previous incarnation died holding these; count deaths as the reaper does.
local counted = max_reaps > 0 and maybe_running(mine, worker) or {}
for _, h in ipairs(mine) do
  if max_reaps > 0 then
    n = n + reap_one(h[1], worker, max_reaps, now, counted[h[1]])
  else
    n = n + requeue(h[1])
  end
end
if n > 0 then
  redis.call('HINCRBY', K.stats, 'returned', n)
  redis.call('PUBLISH', K.wake_channel, 'submit 0')
end
return n
