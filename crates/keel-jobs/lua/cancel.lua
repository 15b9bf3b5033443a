-- Cancel a job that has not finished. A running job's worker learns it at its next heartbeat.
-- (Prepended with compact.lua.)
-- KEYS[1] = queue base; ARGV = id, retention_ms, recent_cap
-- Returns 'ok', 'missing', or the job's final state (a conflict).
local base = KEYS[1]
local id, retention, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('HEXISTS', base .. 'fin', id) == 1 or chunk_succeeded(base, id) then
  return 'succeeded'
end
materialize(base, id)
local key = base .. 'job:' .. id
local f = redis.call('HMGET', key, 'st', 'uk', 'att')
local st = f[1]
if not st then return 'missing' end
if st == 'succeeded' or st == 'dead' or st == 'cancelled' then return st end
-- A queued job's element stays in its ready list: count it as stale, so that fetches check
-- states until they have dropped it (see fetch.lua).
if st == 'queued' then redis.call('INCR', base .. 'stale') end
redis.call('ZREM', base .. 'scheduled', id)
if st == 'running' then drop_lease(base, id .. '|' .. (f[3] or '0')) end
redis.call('HSET', key, 'st', 'cancelled', 'fa', now, 'err', 'cancelled')
redis.call('PEXPIRE', key, retention)
redis.call('LPUSH', base .. 'recent', id)
redis.call('LTRIM', base .. 'recent', 0, cap - 1)
if f[2] and f[2] ~= '' then
  local ukey = base .. 'uniq:' .. f[2]
  if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
end
return 'ok'
