-- expire.lua: forget done tasks, oldest first (retention), or the tasks named (purge-finished,
-- retry-failed). Their records go (output, attempts, the dedup entry: the same line may be
-- submitted again); the counters stay, as forgotten_finished / forgotten_failed.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] mode: 'retain' or 'finished' | 'failed' (forget the named tasks in that state)
-- retain: ARGV[2] keep ms (0 = no age limit)  ARGV[3] keep count (0 = no count limit)
--         ARGV[4] most events (terminal-transition batches) to walk in this call.
--         Walks the events stream from its oldest entry while that entry is older than the
--         age limit or more done tasks are kept than the count limit, forgetting its tasks
--         and deleting the entry.
-- named:  ARGV[2..] tasks.
-- Returns the number of tasks forgotten.
local forgotten = {finished = 0, failed = 0, cancelled = 0}
local function forget(task, only)
  local state = forget_done(task, only)
  if state then forgotten[state] = forgotten[state] + 1 end
end
if ARGV[1] == 'retain' then
  local keep_ms, keep_count = tonumber(ARGV[2]), tonumber(ARGV[3])
  local kept = redis.call('HLEN', K.finished_tasks) + redis.call('HLEN', K.failed_final)
    + redis.call('HLEN', K.cancelled_tasks)
  local cutoff = keep_ms > 0 and (now_ms() - keep_ms) or -1
  for _, entry in ipairs(redis.call('XRANGE', K.events, '-', '+', 'COUNT', tonumber(ARGV[4]))) do
    local id, fields = entry[1], entry[2]
    local ms = tonumber(string.match(id, '^(%d+)'))
    local over = keep_count > 0 and kept - forgotten.finished - forgotten.failed - forgotten.cancelled > keep_count
    if not over and ms >= cutoff then break end
    for i = 1, #fields, 2 do
      if fields[i] == 'task' then forget(fields[i + 1], nil) end
    end
    redis.call('XDEL', K.events, id)
  end
else
  for i = 2, #ARGV do forget(ARGV[i], ARGV[1]) end
end
for state, n in pairs(forgotten) do
  if n > 0 then redis.call('HINCRBY', K.stats, 'forgotten_' .. state, n) end
end
return forgotten.finished + forgotten.failed + forgotten.cancelled
