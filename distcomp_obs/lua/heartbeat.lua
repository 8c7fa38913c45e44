-- heartbeat.lua: renew this worker's lease and publish its status, in one round trip.
-- KEYS: keys.SCRIPT_KEYS.
-- ARGV[1] worker  ARGV[2] incarnation  ARGV[3] lease_ms  ARGV[4] status JSON
-- Returns {lease (1 renewed, 0 expired and re-taken by us, -1 held by another process),
--          epoch or false, stop_requested or false, registered worker names}
-- (the names spare the reaper a round trip). stop_requested is the later of a request to every
-- worker and one naming this worker.
local function stop_for(worker)
  local all, mine = redis.call('GET', K.stop_requested), redis.call('HGET', K.stop_names, worker)
  if mine and (not all or tonumber(mine) > tonumber(all)) then return mine end
  return all
end
local current = redis.call('GET', K.lease)
local state = 1
if current == ARGV[2] then
  redis.call('PEXPIRE', K.lease, ARGV[3])
elseif not current then
  -- Our lease expired (we were frozen or cut off) and nobody took the name: take it back.
  -- The reaper may have returned our tasks meanwhile; their reports will be fenced.
  redis.call('SET', K.lease, ARGV[2], 'PX', ARGV[3])
  state = 0
else
  return {-1, redis.call('GET', K.epoch), stop_for(ARGV[1]), redis.call('SMEMBERS', K.workers)}
end
redis.call('SADD', K.workers, ARGV[1])
local status = cjson.decode(ARGV[4])
status.seen_ms = now_ms()  -- server time: liveness checks in scripts must not trust worker clocks
status.lease_ms = tonumber(ARGV[3])
redis.call('HSET', K.worker_status, ARGV[1], cjson.encode(status))
return {state, redis.call('GET', K.epoch), stop_for(ARGV[1]), redis.call('SMEMBERS', K.workers)}
