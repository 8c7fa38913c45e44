-- leave.lua: a worker that stops cleanly gives up its name. It stays registered (for the
-- reaper and `distcomp workers`) only if it still holds tasks, which the reaper then returns.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] worker  ARGV[2] incarnation
-- Returns 1 when deregistered, 0 when tasks remain (left to the reaper), -1 if the lease was not ours.
if redis.call('GET', K.lease) ~= ARGV[2] then return -1 end
redis.call('DEL', K.lease)
if held_by({[ARGV[1]] = true})[ARGV[1]] then return 0 end
redis.call('SREM', K.workers, ARGV[1])
redis.call('HDEL', K.worker_status, ARGV[1])
redis.call('HDEL', K.stop_names, ARGV[1])
return 1
