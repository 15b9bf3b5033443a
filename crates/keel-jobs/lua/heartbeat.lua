-- Renew the leases a worker holds; report the ones it lost (cancelled, reaped, finished).
-- Leases are per fetch batch (see fetch.lua): the member "id|attempt" is in the `held` hash,
-- mapped to its batch's token, exactly while the attempt holds the job; one HMGET checks the
-- whole call and one ZADD XX renews each batch's token once. Leases written before batch
-- leases (members of the `inflight` zset) are checked and renewed there.
-- (Prepended with compact.lua.)
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
-- Jobs of chunk pieces hold their piece's lease (see compact.lua); the others are in `held`.
local held = {}
local pcache = {}
local rest, restj, nrest = {}, {}, 0
for j = 1, k do
  local id, att, token = ARGV[2 * j], ARGV[2 * j + 1], nil
  if att == '1' and #id == 26 then
    local c = string.sub(id, 1, 24)
    local pc = pcache[c]
    if pc == nil then
      local pieces = pieces_of(base, c)
      pc = false
      if #pieces > 0 then pc = { pieces, redis.call('HGET', base .. 'ck:' .. c, 's') } end
      pcache[c] = pc
    end
    if pc then
      local _, idx = chunk_of(base, id)
      if idx then token = piece_token(pc[1], idx) end
      if token and pc[2] and string.byte(pc[2], idx + 1) ~= 46 then token = nil end
    end
  end
  if token then
    held[j] = token
  else
    nrest = nrest + 1
    rest[nrest], restj[nrest] = members[j], j
    held[j] = false
  end
end
if nrest > 0 then
  local h = redis.call('HMGET', base .. 'held', unpack(rest, 1, nrest))
  for q = 1, nrest do held[restj[q]] = h[q] end
end
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
