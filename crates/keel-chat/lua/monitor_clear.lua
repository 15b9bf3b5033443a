-- Empties a MONITOR list (bounded by the list limit monitor_add enforces). ARGV: id
local id = ARGV[1]
local mk = B .. 'mon:' .. id
for _, n in ipairs(redis.call('SMEMBERS', mk)) do
  redis.call('SREM', B .. 'watch:' .. n, id)
end
redis.call('DEL', mk)
return {'OK'}
