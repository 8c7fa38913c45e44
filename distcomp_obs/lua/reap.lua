-- reap.lua: return the tasks of workers whose lease expired (leaderless, under a lock).
-- KEYS: keys.SCRIPT_KEYS, then worker_lease:{w} per worker from KEYS[FIRST_EXTRA_KEY].
-- ARGV[1] lock token  ARGV[2] lock ms  ARGV[3] max tasks this call (whole workers: one may exceed it)
-- ARGV[4] max reaps per task (deaths count only for tasks that may have been running: maybe_running)
-- ARGV[5] forget after ms: a dead worker holding nothing and unseen this long is deregistered
-- (until then it stays listed, so `distcomp workers`, /sd and the down alerts still show it).
-- ARGV[6..] the worker names matching the lease keys.
-- A dead worker is reaped once: its status gets reaped_ms, so later calls do not walk
-- in_progress_tasks for it again (its heartbeat rewrites the status if it comes back).
-- Returns {returned, failed_for_good} or {-1, 0} when another reaper holds the lock.
if not redis.call('SET', K.reap_lock, ARGV[1], 'NX', 'PX', ARGV[2]) then return {-1, 0} end
local now = now_ms()
local budget = tonumber(ARGV[3])
local max_reaps = tonumber(ARGV[4])
local forget_ms = tonumber(ARGV[5])
local returned, failed = 0, 0
local dead, statuses, any = {}, {}, false
for i = 0, #ARGV - 6 do
  local name = ARGV[6 + i]
  if redis.call('EXISTS', KEYS[FIRST_EXTRA_KEY + i]) == 0 then
    local raw = redis.call('HGET', K.worker_status, name)
    local st = raw and cjson.decode(raw) or {}
    statuses[name] = st
    if not st.reaped_ms then
      dead[name] = true
      any = true
    elseif now - (st.seen_ms or 0) >= forget_ms then
      redis.call('SREM', K.workers, name)
      redis.call('HDEL', K.worker_status, name)
    end
  end
end
if any then
  local held = held_by(dead)
  for name in pairs(dead) do
    if budget <= 0 then break end
    local mine = held[name] or {}
    local counted = maybe_running(mine, name)
    for _, h in ipairs(mine) do
      local r, f = reap_one(h[1], name, max_reaps, now, counted[h[1]])
      returned, failed = returned + r, failed + f
    end
    budget = budget - #mine
    local st = statuses[name]
    st.reaped_ms = now
    redis.call('HSET', K.worker_status, name, cjson.encode(st))
  end
end
if returned > 0 then
  redis.call('HINCRBY', K.stats, 'reaped', returned)
  redis.call('PUBLISH', K.wake_channel, 'submit 0')
end
if redis.call('GET', K.reap_lock) == ARGV[1] then redis.call('DEL', K.reap_lock) end
return {returned, failed}
