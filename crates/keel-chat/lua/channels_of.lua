-- Display names of the channels a client is in. ARGV: id
local out = {}
for _, ch in ipairs(redis.call('SMEMBERS', B .. 'cc:' .. ARGV[1])) do
  local name = redis.call('HGET', B .. 'ch:' .. ch, 'name')
  if name then out[#out + 1] = name end
end
return out
