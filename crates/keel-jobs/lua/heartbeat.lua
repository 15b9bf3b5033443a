-- Renew the leases a worker holds; report the ones it lost (cancelled, reaped, finished).
-- In-flight members are "id|attempt": the attempt holds the job exactly while its member is
-- there (see fetch.lua), so one ZMSCORE checks the whole batch.
-- KEYS[1] = queue base; ARGV = lease_ms, then id, attempt pairs (at most 1000 pairs)
local base = KEYS[1]
if #ARGV > 1 + 2000 then return redis.error_reply('at most 1000 leases per call') end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = string.format('%d', now + tonumber(ARGV[1]))
local members = {}
local k = 0
for i = 2, #ARGV, 2 do
  k = k + 1
  members[k] = ARGV[i] .. '|' .. ARGV[i + 1]
end
if k == 0 then return {} end
local held = redis.call('ZMSCORE', base .. 'inflight', unpack(members))
local lost, renew = {}, {}
for j = 1, k do
  if held[j] then
    renew[#renew + 1] = expiry
    renew[#renew + 1] = members[j]
  else
    lost[#lost + 1] = ARGV[2 * j]
  end
end
for s = 1, #renew, 1000 do
  redis.call('ZADD', base .. 'inflight', 'XX', unpack(renew, s, math.min(s + 999, #renew)))
end
return lost
