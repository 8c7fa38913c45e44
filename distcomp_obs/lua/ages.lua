-- ages.lua: server-time ages of the oldest waiting task (since its submit) and the oldest held
-- task (since its claim), in ms, or -1 when none. Read-only.
-- The oldest waiting task has the lowest seq; within one resource class and priority the
-- FIFO head has it, so one lexical step per (class, priority) in use finds it (at most
-- MAX_GROUPS steps: a queue using more priorities than that gets an estimate).
-- Held tasks are bounded by workers x (slots + prefetch), so they are walked.
-- KEYS: keys.SCRIPT_KEYS.
local MAX_GROUPS = 2000
local now = now_ms()
local best_seq, best_task, steps = nil, nil, 0
for _, class in ipairs(redis.call('SMEMBERS', K.todo_classes)) do
  local lo, hi = class_range(class)
  while steps < MAX_GROUPS do
    steps = steps + 1
    local head = redis.call('ZRANGEBYLEX', K.todo_tasks, lo, hi, 'LIMIT', 0, 1)[1]
    if not head then break end
    local group = tonumber(string.sub(head, #class + 2, #class + 8))
    local seq = tonumber(string.sub(head, #class + 9, #class + 18))
    if not best_seq or seq < best_seq then best_seq, best_task = seq, string.sub(head, #class + 20) end
    lo = '[' .. class .. '|' .. string.format('%07d', group + 1)
  end
end
local todo_age = -1
if best_task then
  local sub = string.match(redis.call('HGET', K.tasks, best_task) or '', '^%d+ (%d+)')
  if sub then todo_age = math.max(0, now - math.floor(tonumber(sub) / 1000)) end
end
local oldest = nil
for _, value in ipairs(redis.call('HVALS', K.in_progress_tasks)) do
  local _, ms = parse_holding(value)
  ms = tonumber(ms)
  if ms and (not oldest or ms < oldest) then oldest = ms end
end
return {todo_age, oldest and math.max(0, now - oldest) or -1}
