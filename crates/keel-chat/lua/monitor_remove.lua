-- Removes folded nicks from a MONITOR list. ARGV: id, nicks (at most 512, from the caller)
local id = ARGV[1]
for i = 2, #ARGV do
  redis.call('SREM', B .. 'mon:' .. id, ARGV[i])
  redis.call('SREM', B .. 'watch:' .. ARGV[i], id)
end
return {'OK'}
