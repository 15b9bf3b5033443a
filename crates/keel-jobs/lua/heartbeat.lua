-- Renew the leases a worker holds; report the ones it lost (cancelled, reaped, finished).
-- KEYS[1] = queue base; ARGV = lease_ms, then id, attempt pairs (at most 1000 pairs)
local base = KEYS[1]
local expiry = now_ms() + tonumber(ARGV[1])
local ids, atts = {}, {}
for i = 2, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  atts[#atts + 1] = tonumber(ARGV[i + 1])
end
local sts = hmget(base .. 'st', ids)
local lost, renew = {}, {}
for k, id in ipairs(ids) do
  local s = parse_st(sts[k])
  if s and s.st == 'running' and s.att == atts[k] then
    renew[#renew + 1] = expiry
    renew[#renew + 1] = id
  else
    lost[#lost + 1] = id
  end
end
if #renew > 0 then
  redis.call('ZADD', base .. 'inflight', 'XX', unpack(renew))
end
return lost
