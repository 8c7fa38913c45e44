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
local mine_tasks = {}
for i = 3, #ARGV, 2 do
  local task, token = ARGV[i], ARGV[i + 1]
  local current = redis.call('HGET', K.claims, task)
  local mine
  if token == '' then
    mine = redis.call('HGET', K.in_progress_tasks, task) == worker or not current
  else
    mine = current == token
  end
  if mine then
    mine_tasks[#mine_tasks + 1] = task
  else
    disown(task, worker)
  end
end
-- A restart: the previous incarnation died holding these; count deaths as the reaper does.
local counted = max_reaps > 0 and maybe_running(mine_tasks, worker) or {}
for _, task in ipairs(mine_tasks) do
  if max_reaps > 0 then
    n = n + reap_one(task, K.owned, max_reaps, now, counted[task])
  else
    n = n + requeue(task, K.owned, now)
  end
end
if n > 0 then
  redis.call('HINCRBY', K.stats, 'returned', n)
  redis.call('PUBLISH', K.wake_channel, 'submit 0')
end
return n
