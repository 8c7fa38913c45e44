-- claim.lua: claim up to n tasks for one worker in one atomic round trip.
-- KEYS: keys.SCRIPT_KEYS (K.lease is this worker's).
-- ARGV[1] worker  ARGV[2] incarnation  ARGV[3] n  ARGV[4] free_dram_gb  ARGV[5] cpus  ARGV[6] window
-- Returns {status, remaining, token, task1, meta1, task2, meta2, ...} (no token when nothing was claimed);; status 1 = ok, -1 = lease lost (nothing claimed).
if redis.call('GET', K.lease) ~= ARGV[2] then return {-1, 0} end
local out = claim(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6]), now_ms())
table.insert(out, 1, redis.call('ZCARD', K.todo_tasks))
table.insert(out, 1, 1)
return out
