-- Renew the leases a worker holds; report the ones it lost (cancelled, reaped, finished).
-- In-flight members are "id|attempt" (see fetch.lua).
-- KEYS[1] = queue base; ARGV = lease_ms, then id, attempt pairs (at most 1000 pairs)
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id, att = ARGV[i], ARGV[i + 1]
  local f = redis.call('HMGET', base .. 'job:' .. id, 'st', 'att')
  if f[1] == 'running' and f[2] == att then
    redis.call('ZADD', base .. 'inflight', 'XX', expiry, id .. '|' .. att)
  else
    lost[#lost + 1] = id
  end
end
return lost
