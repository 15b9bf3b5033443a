-- Takes a lock, or renews it when the caller already holds it. ARGV: name, holder, ttl ms
local k = B .. 'lock:' .. ARGV[1]
local cur = redis.call('GET', k)
if cur and cur ~= ARGV[2] then
  return 0
end
redis.call('SET', k, ARGV[2], 'PX', ARGV[3])
return 1
