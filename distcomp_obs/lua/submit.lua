-- submit.lua: add a batch of task lines; lines already known (queued, running, finished or
-- failed, until forgotten) are skipped, so identical lines are one task.
-- KEYS: keys.SCRIPT_KEYS (the per-worker key is unused).
-- ARGV[1] new epoch value (kept only if none is set)  ARGV[2] trace context JSON or ''
-- ARGV[3] job ('-': none)  ARGV[4..] normalised task lines.
-- Returns the number added. Publishes one wake-up with the highest added priority.
-- A line costs one field of `tasks` (seq, submit time in µs, trace) and one member of
-- todo_tasks: three variadic calls for the whole batch.
local t = redis.call('TIME')
local submitted = t[1] .. string.format('%06d', tonumber(t[2]))
redis.call('SET', K.epoch, ARGV[1], 'NX')
redis.call('SET', K.layout, LAYOUT, 'NX')
if #ARGV < 4 then return 0 end
local known = redis.call('HMGET', K.tasks, unpack(ARGV, 4))
local new, seen = {}, {}
for i = 4, #ARGV do
  local task = ARGV[i]
  if not known[i - 3] and not seen[task] then
    seen[task] = true
    new[#new + 1] = task
  end
end
if #new == 0 then return 0 end
local seq = redis.call('INCRBY', K.seq, #new) - #new
local metas, ids, index, classes, class_list, groups = {}, {}, {}, {}, {}, {}
local tail = ' ' .. submitted .. ' ' .. ARGV[3] .. (ARGV[2] == '' and '' or (' ' .. ARGV[2]))
local top = -1
for _, task in ipairs(new) do
  seq = seq + 1
  local seq_digits = tostring(seq)  -- one number-to-text per line (each costs ~0.5 µs)
  metas[#metas + 1] = task
  metas[#metas + 1] = seq_digits .. tail
  ids[#ids + 1] = seq_digits
  ids[#ids + 1] = task
  local _, _, prio_text, dram, cpu = string.find(task, '^[^:]*:([^:]*):([^:]*):([^:]*):')
  local class = (dram or '0') .. ':' .. (cpu or '0')
  local group = groups[prio_text]
  if not group then
    local prio = tonumber(prio_text) or 0
    group = group_text(prio)
    groups[prio_text] = group
    if prio > top then top = prio end
  end
  index[#index + 1] = 0
  index[#index + 1] = class .. '|' .. group .. string.rep('0', 10 - #seq_digits) .. seq_digits .. '|' .. task
  if not classes[class] then
    classes[class] = true
    class_list[#class_list + 1] = class
  end
end
call_many('HSET', K.tasks, metas)
call_many('HSET', K.task_ids, ids)
call_many('SADD', K.todo_classes, class_list)
call_many('ZADD', K.todo_tasks, index)  -- claimable last
redis.call('HINCRBY', K.stats, 'submitted', #new)
job_count(ARGV[3], 'submitted', #new)
redis.call('PUBLISH', K.wake_channel, 'submit ' .. top)
return #new
