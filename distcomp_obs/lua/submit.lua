-- submit.lua: add a batch of task lines; lines already known (queued, running, finished or
-- failed, until purged) are skipped, so identical lines are one task.
-- KEYS: keys.SCRIPT_KEYS (the per-worker keys are unused).
-- ARGV[1] new epoch value (kept only if none is set)  ARGV[2] trace context JSON or ''
-- ARGV[3..] normalised task lines.
-- Returns the number added. Publishes one wake-up with the highest added priority.
local now = now_ms()
-- Submit time in ms with microseconds, as a string: cjson keeps only 14 significant digits of a
-- number, which would round pickup delays to 10 ms.
local t = redis.call('TIME')
local submitted = t[1] .. string.format('%03d.%03d', math.floor(tonumber(t[2]) / 1000), tonumber(t[2]) % 1000)
redis.call('SET', K.epoch, ARGV[1], 'NX')
local added, top = 0, -1
for i = 3, #ARGV do
  local task = ARGV[i]
  if redis.call('HEXISTS', K.task_meta, task) == 0 then
    local seq = redis.call('INCR', K.seq)
    local meta = {seq = seq, submitted_ms = submitted}
    if ARGV[2] ~= '' then meta.trace = ARGV[2] end
    redis.call('HSET', K.task_meta, task, cjson.encode(meta))
    local prio = task_fields(task)
    redis.call('ZADD', K.todo_index, score(prio, seq), task)
    redis.call('HSET', K.todo_tasks, task, now)
    redis.call('ZADD', K.todo_age, now, task)
    added = added + 1
    if prio > top then top = prio end
  end
end
if added > 0 then
  redis.call('HINCRBY', K.stats, 'submitted', added)
  redis.call('PUBLISH', K.wake_channel, 'submit ' .. top)
end
return added
