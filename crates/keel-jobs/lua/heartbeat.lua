-- Renew the leases a worker holds; report the ones it lost (cancelled, reaped, finished).
-- Leases are per fetch batch (see fetch.lua): the member "id|attempt" is in the `held` hash,
-- mapped to its batch's token, exactly while the attempt holds the job; one HMGET checks the
-- whole call and one ZADD XX renews each batch's token once. Leases written before batch
-- leases (members of the `inflight` zset) are checked and renewed there.
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
local held = redis.call('HMGET', base .. 'held', unpack(members))
local lost, renew, seen = {}, {}, {}
local legacy = nil
for j = 1, k do
  local token = held[j]
  if token then
    if not seen[token] then
      seen[token] = true
      renew[#renew + 1] = expiry
      renew[#renew + 1] = token
    end
  else
    if legacy == nil then legacy = redis.call('EXISTS', base .. 'inflight') == 1 end
    if legacy and redis.call('ZSCORE', base .. 'inflight', members[j]) then
      redis.call('ZADD', base .. 'inflight', 'XX', expiry, members[j])
    else
      lost[#lost + 1] = ARGV[2 * j]
    end
  end
end
-- XX: a batch the reaper has finished stays gone (its jobs were reported lost above).
for s = 1, #renew, 1000 do
  redis.call('ZADD', base .. 'leases', 'XX', unpack(renew, s, math.min(s + 999, #renew)))
end
return lost
