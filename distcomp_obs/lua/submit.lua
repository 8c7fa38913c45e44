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
redis.call('SET', K.layout, LAYOUT, 'NX')
-- Which lines are new: one HMGET for the batch (and a table for repeats within it).
local lines = {}
for i = 3, #ARGV do lines[#lines + 1] = ARGV[i] end
if #lines == 0 then return 0 end
local known = redis.call('HMGET', K.task_meta, unpack(lines))
local new, seen = {}, {}
for i, task in ipairs(lines) do
  if not known[i] and not seen[task] then
    seen[task] = true
    new[#new + 1] = task
  end
end
if #new == 0 then return 0 end
local seq = redis.call('INCRBY', K.seq, #new) - #new
local metas, index, by_class, since, ages = {}, {}, {}, {}, {}
local classes = {}
local top = -1
for _, task in ipairs(new) do
  seq = seq + 1
  local meta
  if ARGV[2] == '' then  -- formatted by hand: cjson.encode costs more than the rest of a line
    meta = '{"seq":' .. seq .. ',"submitted_ms":"' .. submitted .. '"}'
  else
    meta = cjson.encode({seq = seq, submitted_ms = submitted, trace = ARGV[2]})
  end
  local prio = task_fields(task)
  metas[#metas + 1] = task
  metas[#metas + 1] = meta
  local score_text = score(prio, seq)
  index[#index + 1] = score_text
  index[#index + 1] = task
  by_class[#by_class + 1] = 0
  by_class[#by_class + 1] = by_class_member(task, score_text)
  classes[class_of(task)] = true
  since[#since + 1] = task
  since[#since + 1] = now
  ages[#ages + 1] = now
  ages[#ages + 1] = task
  if prio > top then top = prio end
end
call_many('HSET', K.task_meta, metas)
call_many('HSET', K.todo_tasks, since)
call_many('ZADD', K.todo_age, ages)
call_many('ZADD', K.todo_index, index)
local class_list = {}
for class in pairs(classes) do class_list[#class_list + 1] = class end
call_many('SADD', K.todo_classes, class_list)
call_many('ZADD', K.todo_by_class, by_class)  -- claimable last
redis.call('HINCRBY', K.stats, 'submitted', #new)
redis.call('PUBLISH', K.wake_channel, 'submit ' .. top)
return #new
