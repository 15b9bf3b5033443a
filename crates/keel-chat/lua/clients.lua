-- Registered clients' records, at most ARGV[1] (capped by the caller).
local out = {}
for _, id in ipairs(redis.call('ZRANGE', B .. 'presence', 0, tonumber(ARGV[1]) - 1)) do
  local c = client(id)
  if c then out[#out + 1] = pack(c) end
end
return out
