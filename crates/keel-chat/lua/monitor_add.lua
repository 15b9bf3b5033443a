-- Adds folded nicks to a MONITOR list, refusing past the maximum.
-- ARGV: id, max, nicks (at most 512, from the caller)
local id = ARGV[1]
local mk = B .. 'mon:' .. id
local new, seen = {}, {}
for i = 3, #ARGV do
  local n = ARGV[i]
  if not seen[n] and redis.call('SISMEMBER', mk, n) == 0 then
    seen[n] = true
    new[#new + 1] = n
  end
end
if redis.call('SCARD', mk) + #new > tonumber(ARGV[2]) then
  return {'MonitorListFull'}
end
for _, n in ipairs(new) do
  redis.call('SADD', mk, n)
  redis.call('SADD', B .. 'watch:' .. n, id)
end
return {'OK'}
