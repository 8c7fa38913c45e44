-- reap.lua: return the tasks of workers whose lease expired (leaderless, under a lock).
-- KEYS: keys.SCRIPT_KEYS, then pairs worker_lease:{w}, owned:{w} from KEYS[FIRST_EXTRA_KEY].
-- ARGV[1] lock token  ARGV[2] lock ms  ARGV[3] max tasks this call (whole workers: one may exceed it)
-- ARGV[4] max reaps per task (deaths count only for tasks that may have been running: maybe_running)
-- ARGV[5] forget after ms: a dead worker holding nothing and unseen this long is deregistered
-- (until then it stays listed, so `distcomp workers`, /sd and the down alerts still show it).
-- ARGV[6..] the worker names matching the key pairs.
-- Returns {returned, failed_for_good} or {-1, 0} when another reaper holds the lock.
if not redis.call('SET', K.reap_lock, ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1, 0} end
local now = now_ms()
local budget = tonumber(ARGV[3])
local max_reaps = tonumber(ARGV[4])
local returned, failed = 0, 0
local forget_ms = tonumber(ARGV[5])
for i = 0, #ARGV - 6 do
  local lease_key, owned_key = KEYS[FIRST_EXTRA_KEY + 2 * i], KEYS[FIRST_EXTRA_KEY + 1 + 2 * i]
  local name = ARGV[6 + i]
  if redis.call('EXISTS', lease_key) == 0 then
    -- The whole set of one dead worker at once: which of its tasks count a death depends on all.
    local members = redis.call('SMEMBERS', owned_key)
    local held = {}
    if #members > 0 then
      local holders = redis.call('HMGET', K.in_progress_tasks, unpack(members))
      local claims = redis.call('HMGET', K.claims, unpack(members))
      for j, task in ipairs(members) do
        if holders[j] == name or not claims[j] then
          held[#held + 1] = task
        else
          redis.call('SREM', owned_key, task)  -- held again under a newer claim elsewhere
        end
      end
    end
    local counted = maybe_running(held, name)
    for _, task in ipairs(held) do
      local r, f = reap_one(task, owned_key, max_reaps, now, counted[task])
      returned, failed = returned + r, failed + f
    end
    budget = budget - #members
    if redis.call('SCARD', owned_key) == 0 then
      local raw = redis.call('HGET', K.worker_status, name)
      local seen = raw and cjson.decode(raw).seen_ms or 0
      if now - seen >= forget_ms then
        redis.call('SREM', K.workers, name)
        redis.call('HDEL', K.worker_status, name)
      end
    end
  end
  if budget <= 0 then break end
end
if returned > 0 then
  redis.call('HINCRBY', K.stats, 'reaped', returned)
  redis.call('PUBLISH', K.wake_channel, 'submit 0')
end
if redis.call('GET', K.reap_lock) == ARGV[1] then redis.call('DEL', K.reap_lock) end
return {returned, failed}
