-- cancel.lua: cancel tasks by line. A waiting task leaves todo and is recorded cancelled (a
-- terminal state, like finished and failed); a task already done is left as it is.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] who asks (kept in the record)  ARGV[2] reason  ARGV[3..] tasks.
-- A claimed task (buffered or running) gets a cancel request under its claim token: its worker
-- learns of it with its next settle (a "cancel" wake-up makes that soon), stops it and records it
-- cancelled; if that worker dies first, the reaper records it cancelled instead of requeueing it.
-- Returns one word per task: cancelled | stopping | finished | failed | already_cancelled | unknown.
local now = now_ms()
local out, done, stopping = {}, {}, false
local middle = '","by":' .. cjson.encode(ARGV[1]) .. ',"at":' .. now
for i = 3, #ARGV do
  local task = ARGV[i]
  local word
  if redis.call('HEXISTS', K.finished_tasks, task) == 1 then
    word = 'finished'
  elseif redis.call('HEXISTS', K.failed_final, task) == 1 then
    word = 'failed'
  elseif redis.call('HEXISTS', K.cancelled_tasks, task) == 1 then
    word = 'already_cancelled'
  elseif redis.call('HEXISTS', K.in_progress_tasks, task) == 1 then
    local token = parse_holding(redis.call('HGET', K.in_progress_tasks, task))  -- its first field
    redis.call('HSET', K.cancel_requests, task, token)
    stopping = true
    word = 'stopping'
  elseif redis.call('ZREM', K.todo_tasks, member(task, seq_of(redis.call('HGET', K.tasks, task)))) == 1 then
    forget_if_empty(class_of(task))
    redis.call('HSET', K.cancelled_tasks, task, '{"token":"-' .. middle .. '}\n' .. ARGV[2])
    job_count(job_of(redis.call('HGET', K.tasks, task)), 'cancelled', 1)
    done[#done + 1] = task
    word = 'cancelled'
  else
    word = 'unknown'
  end
  out[#out + 1] = word
end
if #done > 0 then
  redis.call('HINCRBY', K.stats, 'cancelled', #done)
  event('cancelled', done, now)
end
if stopping then redis.call('PUBLISH', K.wake_channel, 'cancel') end
return out
