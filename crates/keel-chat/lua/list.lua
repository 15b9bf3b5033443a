-- Channels: {name, member count, topic}, at most ARGV[1] (capped by the caller).
local out = {}
for _, ch in ipairs(redis.call('ZRANGE', B .. 'chans', 0, tonumber(ARGV[1]) - 1)) do
  local h = redis.call('HMGET', B .. 'ch:' .. ch, 'name', 'topic')
  if h[1] then
    out[#out + 1] = {h[1], redis.call('HLEN', B .. 'chm:' .. ch), h[2] or ''}
  end
end
return out
